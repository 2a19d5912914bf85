"""Host planning of a flashinfer step: which paged calls run over which query rows and pages.

FlashInferBackend.plan() (flashinfer_backend.py) calls `plan_step` with a step's query and
sequence lengths and the prefix groups the `CascadePolicy` accepts; the resulting StepLayout
orders the rows so each paged call (decode, prefill, shared prefix) reads one contiguous run,
and `gather_page_indices` collects the calls' page ids on the device. Pure host code plus one
device gather: no flashinfer import, so CPU tests cover it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Literal

import torch

from parrotlet_kernels.interface import PrefixGroup


@dataclass(frozen=True)
class CascadePolicy:
    """When a PrefixGroup's shared prefix is attended once for the group instead of per sequence.

    "auto" cascades a group iff the KV bytes it saves reading per layer, (members - 1) * prefix
    bytes, are >= `min_saved_bytes`. Measured on an H100 (bf16, 32 q / 8 KV heads x 128, page
    16, suffix 64, decode batch 16-256 x prefix 1K-16K): the cascade's kernels are never slower
    (1.07x at 16 x 1K to 7x at 256 x 16K, CUDA-graph replay), but its third call and merge add
    ~120 us of host work per layer, so in the eager engine it paid only from ~1 GiB saved per
    layer (64 x 8K: 1.25x, 128 x 4K: 2x; 64 x 4K and 16 x 16K, ~1 GiB, were 1.4-1.5x slower).
    "always" / "never" force the choice (tests, benchmarks).
    """

    mode: Literal["auto", "always", "never"] = "auto"
    min_saved_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "always", "never"):
            raise ValueError(f"mode must be auto, always or never, got {self.mode!r}")

    def use_cascade(self, members: int, prefix_bytes: int) -> bool:
        """Whether `members` sequences sharing `prefix_bytes` of KV per layer should cascade."""
        if self.mode != "auto":
            return self.mode == "always"
        return (members - 1) * prefix_bytes >= self.min_saved_bytes


@dataclass(frozen=True)
class PagedCall:
    """One flashinfer paged-attention call over the work-order query rows [row_start, row_end).

    Request r owns rows `qo_indptr[r]:qo_indptr[r+1]` (relative to row_start) and the pages
    `page_indices[page_start + kv_indptr[r] : page_start + kv_indptr[r+1]]`, whose last holds
    `last_page_len[r]` tokens.
    """

    row_start: int
    row_end: int
    qo_indptr: tuple[int, ...]  # [num_requests + 1]
    kv_indptr: tuple[int, ...]  # [num_requests + 1]
    last_page_len: tuple[int, ...]  # [num_requests]
    page_start: int


@dataclass(frozen=True)
class StepLayout:
    """Host plan of one step: the query rows in work order and the paged calls over them.

    Work order: ungrouped decodes, grouped decodes, grouped prefills, ungrouped prefills (groups
    in cascade order), so the decode call, the prefill call and the shared-prefix call each read
    one contiguous run of rows. Every request over all calls reads pages
    `block_tables[req_row, req_first_page : req_first_page + req_num_pages]`, concatenated in
    call order into the step's page list.
    """

    order: tuple[int, ...] | None  # work-order row -> token index; None when identity
    decode: PagedCall | None  # query_len 1, over each sequence's own KV (after a cascaded prefix)
    prefill: PagedCall | None  # query_len > 1, causal, over each sequence's own KV
    shared: PagedCall | None  # cascaded groups' tokens over their shared prefix, not causal
    req_row: tuple[int, ...]
    req_first_page: tuple[int, ...]
    req_num_pages: tuple[int, ...]


def plan_step(
    query_lens: Sequence[int],
    seq_lens: Sequence[int],
    groups: Sequence[PrefixGroup],
    block_size: int,
) -> StepLayout:
    """Lay out one step for flashinfer; `groups` are the prefix groups chosen for cascade."""
    own_first_page = [0] * len(seq_lens)
    for group in groups:
        for i in group.seq_indices:
            own_first_page[i] = group.num_blocks
    grouped = [i for group in groups for i in group.seq_indices]
    ungrouped = sorted(set(range(len(seq_lens))) - set(grouped))
    dec_u = [i for i in ungrouped if query_lens[i] == 1]
    dec_g = [i for i in grouped if query_lens[i] == 1]
    pre_g = [i for i in grouped if query_lens[i] > 1]
    pre_u = [i for i in ungrouped if query_lens[i] > 1]
    calls = _CallBuilder(query_lens, seq_lens, block_size)
    decode = calls.own_kv(dec_u + dec_g, 0, own_first_page)
    prefill = calls.own_kv(pre_g + pre_u, len(dec_u) + len(dec_g), own_first_page)
    shared_reqs = [
        [i for i in group.seq_indices if (query_lens[i] == 1) == is_decode]
        for is_decode in (True, False)
        for group in groups
    ]
    shared = calls.shared_prefix(shared_reqs, groups * 2, len(dec_u))
    starts = list(accumulate(query_lens, initial=0))
    order = [t for i in dec_u + dec_g + pre_g + pre_u for t in range(starts[i], starts[i + 1])]
    return StepLayout(
        order=None if order == list(range(len(order))) else tuple(order),
        decode=decode,
        prefill=prefill,
        shared=shared,
        req_row=tuple(calls.req_row),
        req_first_page=tuple(calls.req_first_page),
        req_num_pages=tuple(calls.req_num_pages),
    )


class _CallBuilder:
    """Accumulates the requests of a step's paged calls (their pages are gathered on device)."""

    def __init__(self, query_lens: Sequence[int], seq_lens: Sequence[int], block_size: int):
        self.query_lens, self.seq_lens, self.block_size = query_lens, seq_lens, block_size
        self.req_row: list[int] = []
        self.req_first_page: list[int] = []
        self.req_num_pages: list[int] = []

    def own_kv(self, seqs: list[int], row_start: int, first_page: list[int]) -> PagedCall | None:
        """One request per sequence over its KV from `first_page[i]` to its last token."""
        if not seqs:
            return None
        bs = self.block_size
        num_pages = [-(-self.seq_lens[i] // bs) - first_page[i] for i in seqs]
        last = [(self.seq_lens[i] - 1) % bs + 1 for i in seqs]
        return self._call(seqs, [first_page[i] for i in seqs], num_pages, last, seqs, row_start)

    def shared_prefix(
        self, members: list[list[int]], groups: Sequence[PrefixGroup], row_start: int
    ) -> PagedCall | None:
        """One request per non-empty member list: all its query rows over the group's prefix."""
        reqs = [(m, g) for m, g in zip(members, groups, strict=True) if m]
        if not reqs:
            return None
        return self._call(
            rows=[m[0] for m, _ in reqs],
            first_page=[0] * len(reqs),
            num_pages=[g.num_blocks for _, g in reqs],
            last=[self.block_size] * len(reqs),
            qo_seqs=[m for m, _ in reqs],
            row_start=row_start,
        )

    def _call(
        self,
        rows: list[int],
        first_page: list[int],
        num_pages: list[int],
        last: list[int],
        qo_seqs: Sequence[int | list[int]],
        row_start: int,
    ) -> PagedCall:
        qo_lens = [
            sum(self.query_lens[i] for i in s) if isinstance(s, list) else self.query_lens[s]
            for s in qo_seqs
        ]
        qo_indptr = tuple(accumulate(qo_lens, initial=0))
        call = PagedCall(
            row_start=row_start,
            row_end=row_start + qo_indptr[-1],
            qo_indptr=qo_indptr,
            kv_indptr=tuple(accumulate(num_pages, initial=0)),
            last_page_len=tuple(last),
            page_start=sum(self.req_num_pages),
        )
        self.req_row += rows
        self.req_first_page += first_page
        self.req_num_pages += num_pages
        return call


def gather_page_indices(
    block_tables: torch.Tensor,  # [num_seqs, max_blocks] int32
    req_row: torch.Tensor,  # [num_requests] int
    req_first_page: torch.Tensor,  # [num_requests] int
    req_num_pages: torch.Tensor,  # [num_requests] int
    total_pages: int,
) -> torch.Tensor:  # [total_pages] int32
    """The requests' page ids, concatenated, computed on the tables' device without a sync."""
    device = block_tables.device
    counts = req_num_pages.long()
    req = torch.repeat_interleave(
        torch.arange(counts.numel(), device=device), counts, output_size=total_pages
    )  # [total_pages], the request of each page
    first_of_req = torch.cumsum(counts, 0) - counts  # [num_requests]
    page = req_first_page.long()[req] + torch.arange(total_pages, device=device) - first_of_req[req]
    return block_tables[req_row.long()[req], page]  # [total_pages]
