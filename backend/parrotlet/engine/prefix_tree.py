"""PrefixTree: a radix tree over block-aligned token prefixes, mapping cached prefixes to KV blocks.

Owned by the BlockManager. A node is one full KV block; its key is the block's tokens, its path from
a per-namespace root is the whole prefix. Leaves whose blocks nobody references are evicted LRU.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

BlockKey = tuple[int, ...]


@dataclass(eq=False)
class PrefixNode:
    """One cached full block: `tokens` follow the prefix spelled by the path from the root."""

    block_id: int
    tokens: BlockKey
    parent: PrefixNode | None
    children: dict[BlockKey, PrefixNode] = field(default_factory=dict)
    last_used: int = 0


class PrefixTree:
    """Cached prefixes per namespace (a tenant): prefixes never match across namespaces.

    Invariants: a block id is in the tree at most once; a node is evictable exactly when it is a
    leaf and `is_referenced(block_id)` is false. Eviction pops the least recently used such leaf.
    """

    def __init__(self, block_size: int, is_referenced: Callable[[int], bool]) -> None:
        self.block_size = block_size
        self._is_referenced = is_referenced
        self._roots: dict[str, PrefixNode] = {}
        self._nodes: dict[int, PrefixNode] = {}  # block_id -> node
        self._clock = itertools.count(1)
        self._heap: list[tuple[int, int, PrefixNode]] = []  # (last_used, tiebreak, node), lazy

    def __contains__(self, block_id: int) -> bool:
        return block_id in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def match(self, token_ids: Sequence[int], namespace: str = "") -> list[int]:
        """Block ids of the longest cached block-aligned prefix of `token_ids`; marks them used."""
        node = self._roots.get(namespace)
        blocks: list[int] = []
        now = next(self._clock)
        for key in self._block_keys(token_ids):
            if node is None or (node := node.children.get(key)) is None:
                break
            node.last_used = now
            blocks.append(node.block_id)
        return blocks

    def insert(
        self, token_ids: Sequence[int], block_ids: Sequence[int], namespace: str = ""
    ) -> list[int]:
        """Record that `block_ids[i]` holds the KV of the i-th full block of `token_ids`.

        Returns the block ids that were newly added. Where a block for the same prefix is cached
        already, the existing node is kept and the duplicate block is not added.
        """
        node = self._roots.setdefault(namespace, PrefixNode(-1, (), None))
        added: list[int] = []
        now = next(self._clock)
        for key, block_id in zip(self._block_keys(token_ids), block_ids, strict=False):
            child = node.children.get(key)
            if child is None:
                if block_id in self._nodes:  # the block already caches another prefix
                    break
                child = PrefixNode(block_id, key, node)
                node.children[key] = child
                self._nodes[block_id] = child
                added.append(block_id)
            child.last_used = now
            node = child
        return added

    def release(self, block_id: int) -> None:
        """Tell the tree that `block_id` lost its last reference: it may become evictable."""
        node = self._nodes.get(block_id)
        if node is not None and not node.children:
            self._push(node)

    def evict(self) -> int | None:
        """Remove the least recently used unreferenced leaf; return its block id (or None)."""
        while self._heap:
            last_used, _, node = heapq.heappop(self._heap)
            if not self._evictable(node):
                continue
            if node.last_used != last_used:  # used since it was queued: queue it again
                self._push(node)
                continue
            self._remove(node)
            return node.block_id
        return None

    def _evictable(self, node: PrefixNode) -> bool:
        return (
            node.block_id in self._nodes
            and not node.children
            and not self._is_referenced(node.block_id)
        )

    def _remove(self, node: PrefixNode) -> None:
        parent = node.parent
        assert parent is not None
        del parent.children[node.tokens]
        del self._nodes[node.block_id]
        if parent.block_id >= 0 and not parent.children:
            self._push(parent)

    def _push(self, node: PrefixNode) -> None:
        heapq.heappush(self._heap, (node.last_used, node.block_id, node))

    def _block_keys(self, token_ids: Sequence[int]) -> list[BlockKey]:
        bs = self.block_size
        return [tuple(token_ids[i : i + bs]) for i in range(0, len(token_ids) - bs + 1, bs)]
