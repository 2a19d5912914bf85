"""Scheduler: token budget, chunked prefill, priorities, preemption by recompute (no model)."""

from __future__ import annotations

import itertools

from parrotlet.engine.block_manager import BlockManager
from parrotlet.engine.config import SchedulerConfig
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.engine.scheduler import Scheduler
from parrotlet.engine.sequence import FinishReason, Sequence, SequenceStatus

_arrivals = itertools.count()


def make_scheduler(num_blocks=64, block_size=4, budget=64, max_seqs=8) -> Scheduler:
    return Scheduler(
        SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=max_seqs),
        BlockManager(num_blocks, block_size),
    )


def make_seq(rid: str, num_tokens: int, priority: int = 0, first: int = 0) -> Sequence:
    tokens = list(range(first, first + num_tokens))
    return Sequence(rid, tokens, SamplingParams(), next(_arrivals), priority)


def complete_step(sched: Scheduler, batch, new_token: int = 1000) -> None:
    """What the engine does after running a batch: advance, cache blocks, append a token."""
    for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
        seq.num_computed_tokens += n
        sched.blocks.cache_full_blocks(seq)
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(new_token)


def scheduled(batch) -> list[tuple[str, int]]:
    return [(s.request_id, n) for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True)]


def test_token_budget_chunks_a_long_prefill():
    sched = make_scheduler(budget=16)
    sched.add(make_seq("a", 40))
    steps = []
    for _ in range(4):
        batch = sched.schedule()
        steps.append(scheduled(batch))
        complete_step(sched, batch)
    assert steps == [[("a", 16)], [("a", 16)], [("a", 8)], [("a", 1)]]


def test_decodes_go_first_and_prefill_takes_the_rest_of_the_budget():
    sched = make_scheduler(budget=16)
    sched.add(make_seq("a", 4))
    complete_step(sched, sched.schedule())
    sched.add(make_seq("b", 30))
    batch = sched.schedule()
    assert scheduled(batch) == [("a", 1), ("b", 15)]


def test_priority_orders_admission():
    sched = make_scheduler(budget=8)
    sched.add(make_seq("throughput", 8, priority=1))
    sched.add(make_seq("latency", 8, priority=0))
    assert scheduled(sched.schedule()) == [("latency", 8)]


def test_max_num_seqs_caps_the_running_set():
    sched = make_scheduler(max_seqs=2)
    for rid in "abc":
        sched.add(make_seq(rid, 4))
    batch = sched.schedule()
    assert [s.request_id for s in batch.seqs] == ["a", "b"]
    assert sched.num_waiting == 1


def test_prefix_hit_skips_cached_tokens():
    sched = make_scheduler(budget=64, block_size=4)
    sched.add(make_seq("a", 10))
    complete_step(sched, sched.schedule())
    sched.add(make_seq("b", 11))  # same first 10 tokens: blocks [0..3], [4..7] are cached
    batch = sched.schedule()
    assert scheduled(batch) == [("a", 1), ("b", 3)]
    b = batch.seqs[1]
    assert b.num_cached_tokens == 8
    assert b.block_ids[:2] == batch.seqs[0].block_ids[:2]


def test_preemption_by_recompute_evicts_the_lowest_priority_running_sequence():
    # 6 blocks of 4 tokens. a (priority 0) and b (priority 1) each take 3 blocks for 12 tokens.
    sched = make_scheduler(num_blocks=6, block_size=4, budget=64)
    a, b = make_seq("a", 12, priority=0), make_seq("b", 12, priority=1, first=100)
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    assert scheduled(batch) == [("a", 12), ("b", 12)]
    complete_step(sched, batch)
    # Both need a 4th block for their 13th token; only `a` gets it, `b` is preempted.
    batch = sched.schedule()
    assert scheduled(batch) == [("a", 1)]
    assert batch.preempted == [b]
    assert b.status is SequenceStatus.WAITING
    assert b.num_computed_tokens == 0 and b.block_ids == []
    assert b.token_ids[-1] == 1000  # generated tokens are kept and will be recomputed
    assert b.num_preemptions == 1


def test_a_request_that_can_never_fit_fails_instead_of_hanging():
    sched = make_scheduler(num_blocks=2, block_size=4)
    seq = make_seq("big", 12)
    sched.add(seq)
    batch = sched.schedule()
    assert batch.seqs == [] and batch.failed == [seq]
    assert seq.finish_reason is FinishReason.ERROR
    assert not sched.has_unfinished()


def test_abort_frees_blocks():
    sched = make_scheduler(num_blocks=8, block_size=4)
    seq = make_seq("a", 10)
    sched.add(seq)
    complete_step(sched, sched.schedule())
    sched.abort(seq)
    assert seq.finish_reason is FinishReason.ABORT
    assert sched.blocks.num_free_blocks == 8
    assert not sched.has_unfinished()
