"""BlockManager: the paged KV pool — free list, ref counts, and the PrefixTree of cached prefixes.

The scheduler asks it for blocks before a step; a sequence's full computed blocks are recorded in
the tree after the step so later sequences (and pinned prefixes) reuse them instead of recomputing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence as Seq

from parrotlet.engine.prefix_tree import PrefixTree
from parrotlet.engine.sequence import Sequence


class BlockManager:
    """Hands out KV blocks of `block_size` tokens.

    Invariants: a block is in exactly one of {free list, referenced (ref>0), cached-unreferenced in
    the tree}; `ref_counts[b]` counts the sequences and pins that hold block `b`. Unreferenced
    cached blocks stay matchable until eviction needs them (LRU leaves first).
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"num_blocks ({num_blocks}) and block_size ({block_size}) must be >= 1"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._num_cached_unreferenced = 0
        self.tree = PrefixTree(block_size, is_referenced=lambda b: self.ref_counts[b] > 0)

    # ---- queries -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks obtainable now: the free list plus unreferenced cached blocks."""
        return len(self._free) + self._num_cached_unreferenced

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """Blocks `seq` must still get to hold `num_tokens` tokens."""
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_ids))

    def match_prefix(self, token_ids: Seq[int], namespace: str = "") -> list[int]:
        """Cached blocks of the longest block-aligned prefix of `token_ids` (takes no refs)."""
        if not self.enable_prefix_caching:
            return []
        return self.tree.match(token_ids, namespace)

    # ---- allocation ----------------------------------------------------------------------
    def acquire_prefix(self, seq: Sequence, block_ids: Seq[int]) -> None:
        """Give a fresh sequence the cached blocks of its prefix (from `match_prefix`)."""
        assert not seq.block_ids, "prefix blocks go first"
        for b in block_ids:
            self._ref(b)
        seq.block_ids = list(block_ids)
        seq.num_cached_blocks = len(block_ids)
        seq.num_computed_tokens = len(block_ids) * self.block_size

    def allocate(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow `seq` to hold `num_tokens` tokens; False (and no change) if the pool is short."""
        needed = self.blocks_needed(seq, num_tokens)
        if needed > self.num_free_blocks:
            return False
        new_blocks: list[int] = []
        for _ in range(needed):
            block = self._take_block()
            if block is None:  # cached blocks were held by a duplicate chain: undo
                for b in new_blocks:
                    self._unref(b)
                return False
            self._ref(block)
            new_blocks.append(block)
        seq.block_ids.extend(new_blocks)
        return True

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references; cached blocks stay in the tree for reuse."""
        for b in reversed(seq.block_ids):  # leaves first, so LRU evicts suffixes before prefixes
            self._unref(b)
        seq.block_ids = []
        seq.num_cached_blocks = 0

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Record the sequence's newly full, computed blocks whose token ids are all known in
        the prefix tree (a block holding a pending token waits for its id)."""
        if not self.enable_prefix_caching:
            return
        num_full = min(seq.num_computed_tokens, seq.num_known_tokens) // self.block_size
        if num_full <= seq.num_cached_blocks:
            return
        tokens = seq.token_ids[: num_full * self.block_size]
        self.tree.insert(tokens, seq.block_ids[:num_full], seq.cache_namespace)
        seq.num_cached_blocks = num_full

    def hold(self, block_ids: Seq[int]) -> None:
        """Take one more reference on each block (a pin keeps a prefix from eviction)."""
        for b in block_ids:
            self._ref(b)

    def release(self, block_ids: Seq[int]) -> None:
        """Drop one reference on each block (the inverse of `hold`)."""
        for b in reversed(block_ids):
            self._unref(b)

    # ---- internals -----------------------------------------------------------------------
    def _take_block(self) -> int | None:
        if self._free:
            return self._free.popleft()
        block = self.tree.evict()
        if block is not None:
            self._num_cached_unreferenced -= 1
        return block

    def _ref(self, block: int) -> None:
        if self.ref_counts[block] == 0 and block in self.tree:
            self._num_cached_unreferenced -= 1
        self.ref_counts[block] += 1

    def _unref(self, block: int) -> None:
        assert self.ref_counts[block] > 0, f"block {block} freed twice"
        self.ref_counts[block] -= 1
        if self.ref_counts[block] > 0:
            return
        if block in self.tree:
            self._num_cached_unreferenced += 1
            self.tree.release(block)
        else:
            self._free.append(block)
