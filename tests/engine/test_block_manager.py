"""BlockManager + PrefixTree: exact block ids, ref counts, prefix reuse, LRU eviction."""

from __future__ import annotations

from parrotlet.engine.block_manager import BlockManager
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.engine.sequence import Sequence


def make_seq(tokens: list[int], namespace: str = "", rid: str = "r") -> Sequence:
    return Sequence(rid, list(tokens), SamplingParams(), arrival=0, cache_namespace=namespace)


def run_prefill(bm: BlockManager, seq: Sequence) -> None:
    """What the scheduler + engine do for a whole-prompt prefill."""
    bm.acquire_prefix(seq, bm.match_prefix(seq.token_ids[:-1], seq.cache_namespace))
    assert bm.allocate(seq, seq.num_tokens)
    seq.num_computed_tokens = seq.num_tokens
    bm.cache_full_blocks(seq)


def test_allocate_hands_out_blocks_in_order_and_free_returns_them():
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = make_seq(list(range(10)))
    assert bm.allocate(seq, 10)
    assert seq.block_ids == [0, 1, 2]
    assert bm.ref_counts[:4] == [1, 1, 1, 0]
    assert bm.num_free_blocks == 5
    assert bm.allocate(seq, 13)
    assert seq.block_ids == [0, 1, 2, 3]
    bm.free(seq)
    assert bm.ref_counts == [0] * 8
    assert bm.num_free_blocks == 8


def test_allocate_fails_without_side_effects_when_pool_is_short():
    bm = BlockManager(num_blocks=2, block_size=4)
    seq = make_seq(list(range(12)))
    assert not bm.allocate(seq, 12)
    assert seq.block_ids == []
    assert bm.num_free_blocks == 2


def test_second_sequence_reuses_full_blocks_of_the_first():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = make_seq(list(range(10)), rid="a")
    run_prefill(bm, a)
    assert a.block_ids == [0, 1, 2]
    assert len(bm.tree) == 2  # blocks 0 and 1 are full; block 2 holds 2 tokens

    b = make_seq([*range(8), 99, 98, 97], rid="b")
    run_prefill(bm, b)
    assert b.block_ids == [0, 1, 3]
    assert b.num_cached_blocks == 2
    assert bm.ref_counts[:4] == [2, 2, 1, 1]


def test_a_fully_cached_prompt_still_computes_its_last_token():
    bm = BlockManager(num_blocks=16, block_size=4)
    run_prefill(bm, make_seq(list(range(8)), rid="a"))
    b = make_seq(list(range(8)), rid="b")
    matched = bm.match_prefix(b.token_ids[:-1])
    assert matched == [0]  # block 1 holds the last token: it is recomputed, not shared


def test_namespaces_never_share_prefixes():
    bm = BlockManager(num_blocks=16, block_size=4)
    run_prefill(bm, make_seq(list(range(9)), namespace="tenant-a"))
    assert bm.match_prefix(list(range(9)), "tenant-a") == [0, 1]
    assert bm.match_prefix(list(range(9)), "tenant-b") == []
    assert bm.match_prefix(list(range(9))) == []


def test_freed_cached_blocks_stay_matchable_until_evicted_lru_leaf_first():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = make_seq([1, 2, 3, 4, 5], rid="a")  # full blocks [1,2], [3,4]
    run_prefill(bm, a)
    assert a.block_ids == [0, 1, 2]
    bm.free(a)
    assert bm.num_free_blocks == 4
    assert bm.match_prefix([1, 2, 3, 4]) == [0, 1]

    # Needs 3 blocks: free list gives 3 and 2, then eviction takes the leaf (1) before its parent.
    c = make_seq([7, 7, 7, 7, 7, 7], rid="c")
    assert bm.allocate(c, 6)
    assert c.block_ids == [3, 2, 1]
    assert bm.match_prefix([1, 2, 3, 4]) == [0]
    assert bm.num_free_blocks == 1


def test_referenced_blocks_are_never_evicted():
    bm = BlockManager(num_blocks=3, block_size=2)
    a = make_seq([1, 2, 3, 4, 5], rid="a")
    run_prefill(bm, a)  # holds all 3 blocks
    b = make_seq([9, 9], rid="b")
    assert not bm.allocate(b, 2)
    assert bm.match_prefix([1, 2, 3, 4]) == [0, 1]


def test_hold_pins_a_prefix_against_eviction():
    bm = BlockManager(num_blocks=3, block_size=2)
    a = make_seq([1, 2, 3, 4, 5], rid="a")
    run_prefill(bm, a)
    pinned = a.block_ids[:2]
    bm.hold(pinned)
    bm.free(a)
    assert bm.num_free_blocks == 1
    b = make_seq([9, 9, 9, 9], rid="b")
    assert not bm.allocate(b, 4)
    bm.release(pinned)
    assert bm.allocate(b, 4)
    assert b.block_ids == [2, 1]  # the free block, then the LRU leaf of the old prefix


def test_lru_order_follows_last_use():
    bm = BlockManager(num_blocks=4, block_size=2)
    old = make_seq([1, 1, 0], rid="old")
    new = make_seq([2, 2, 0], rid="new")
    run_prefill(bm, old)  # blocks 0 (cached [1,1]) and 1
    run_prefill(bm, new)  # blocks 2 (cached [2,2]) and 3
    bm.free(old)
    bm.free(new)
    bm.match_prefix([1, 1, 5])  # touch the old prefix: the [2,2] block is now least recent
    x = make_seq([5, 5, 5, 5, 5, 5], rid="x")
    assert bm.allocate(x, 6)
    assert x.block_ids == [1, 3, 2]
    assert bm.match_prefix([1, 1, 5]) == [0]
    assert bm.match_prefix([2, 2, 5]) == []
