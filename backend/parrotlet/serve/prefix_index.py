"""PrefixIndex: which prompt prefixes were recently sent to one engine, as chained block hashes.

Placement reads it for prefix affinity: calls sharing a prefix go where that prefix was sent (its
KV is cached there, or soon will be). A RemoteEngine keeps one as its view of the worker's cache.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence


def block_hashes(prompt: Sequence[int], cache_namespace: str, block_size: int) -> list[int]:
    """One hash per full block of `prompt`, each chained to the blocks before it and salted with
    the namespace, so equal hashes mean an equal prefix of the same tenant."""
    hashes: list[int] = []
    h = hash(("parrotlet-prefix", cache_namespace))
    for start in range(0, len(prompt) - block_size + 1, block_size):
        h = hash((h, tuple(prompt[start : start + block_size])))
        hashes.append(h)
    return hashes


class PrefixIndex:
    """Chained block hashes with their last use, dropped after `ttl_s` or beyond `max_blocks`.

    An approximation for placement only (hash collisions or evictions cost a cache miss, never a
    wrong output).
    """

    def __init__(
        self,
        block_size: int,
        *,
        ttl_s: float | None = None,
        max_blocks: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.ttl_s = ttl_s
        self.max_blocks = max_blocks
        self._clock = clock
        self._blocks: OrderedDict[int, float] = OrderedDict()  # hash -> last use, oldest first

    def __len__(self) -> int:
        return len(self._blocks)

    def record(self, prompt: Sequence[int], cache_namespace: str) -> None:
        """`prompt`'s full blocks are (about to be) cached on the engine. Recorded last block
        first, so the least recently used end of the index holds leaves, as in a radix cache."""
        now = self._clock()
        for h in reversed(block_hashes(prompt, cache_namespace, self.block_size)):
            self._blocks[h] = now
            self._blocks.move_to_end(h)
        self._evict(now)

    def match_len(self, prompt: Sequence[int], cache_namespace: str) -> int:
        """How many leading tokens of `prompt` (whole blocks) were recorded and not dropped."""
        self._evict(self._clock())
        num = 0
        for h in block_hashes(prompt, cache_namespace, self.block_size):
            if h not in self._blocks:
                break
            num += 1
        return num * self.block_size

    def clear(self) -> None:
        self._blocks.clear()

    def _evict(self, now: float) -> None:
        while self.max_blocks is not None and len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)
        if self.ttl_s is None:
            return
        while self._blocks:
            h, used = next(iter(self._blocks.items()))
            if now - used <= self.ttl_s:
                break
            del self._blocks[h]
