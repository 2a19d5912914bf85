"""Prefix sharing across calls: calls that become ready together and whose prompts start with the
same tokens (same tenant only) prefill that prefix once, pinned on one engine, then fork from it.

The executor collects the calls that become ready in one event-loop pass and asks `find_shares`
which of them to group; each group's members wait for the pin, run, and the last one unpins.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from parrotlet.serve.engines import EngineHandle

T = TypeVar("T", bound=Hashable)


@dataclass(eq=False)
class SharedPrefix(Generic[T]):
    """A prefix of `prompt` (block-aligned) shared by `members`, all in one cache namespace."""

    prompt: tuple[int, ...]
    namespace: str
    members: list[T]
    engine: EngineHandle | None = None  # where the pin lives, once placed
    pin_id: str | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    remaining: int = 0

    def __post_init__(self) -> None:
        self.remaining = len(self.members)


def find_shares(
    prompts: Sequence[tuple[T, str, Sequence[int]]], block_size: int, min_tokens: int
) -> list[SharedPrefix[T]]:
    """Group (member, namespace, prompt ids) by their longest common block-aligned prefix.

    Members are bucketed by namespace and their first `min_tokens` tokens; a bucket of two or more
    shares the longest prefix common to all of its prompts, cut to whole blocks. Prompts never
    group across namespaces (tenants).
    """
    min_tokens = max(min_tokens, block_size)
    buckets: dict[tuple[str, tuple[int, ...]], list[tuple[T, Sequence[int]]]] = defaultdict(list)
    for member, namespace, prompt in prompts:
        if len(prompt) > min_tokens:
            buckets[(namespace, tuple(prompt[:min_tokens]))].append((member, prompt))
    shares = []
    for (namespace, _), entries in buckets.items():
        if len(entries) < 2:
            continue
        common = _common_prefix_len([p for _, p in entries])
        # Keep one token of each prompt out of the shared part: every member computes its last.
        common = min(common, *(len(p) - 1 for _, p in entries))
        aligned = common // block_size * block_size
        if aligned >= min_tokens:
            prompt = tuple(entries[0][1][:aligned])
            shares.append(SharedPrefix(prompt, namespace, [m for m, _ in entries]))
    return shares


def _common_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    first = prompts[0]
    n = min(len(p) for p in prompts)
    for i in range(n):
        token = first[i]
        if any(p[i] != token for p in prompts):
            return i
    return n
