"""The flashinfer attention backend: the engine's GPU path behind the AttentionBackend interface.

plan() turns one step's AttentionMetadata into flashinfer paged decode / prefill / shared-prefix
calls; each model layer's forward() writes its k/v into the paged cache and runs them.
GraphDecodeAttention is the decode-only variant over fixed buffers that a CUDA graph can capture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal

import torch

from parrotlet_kernels.interface import AttentionMetadata, AttentionSpec, PrefixGroup, Rope
from parrotlet_kernels.triton_prefix_tiles import PrefixTiles, TiledPages, TileShape, tile_shape
from parrotlet_kernels.validation import validate_metadata

WORKSPACE_BYTES = 128 << 20  # flashinfer's recommended float workspace (split-KV partials)


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


@dataclass(frozen=True)
class FlashInferOps:
    """The flashinfer entry points the backend needs; CPU tests substitute torch fakes.

    `make_decode()` returns an object with BatchDecodeWithPagedKVCacheWrapper's plan/run,
    `make_prefill()` one with BatchPrefillWithPagedKVCacheWrapper's; `merge_state_in_place`
    merges states whose LSEs are base 2, as flashinfer returns them.
    `make_graph_decode(indptr, indices, last_page_len)` returns a decode wrapper in CUDA-graph
    mode whose batch size is `len(last_page_len)` and whose plan() copies into those buffers.
    """

    make_decode: Callable[[], Any]
    make_prefill: Callable[[], Any]
    merge_state_in_place: Callable[..., None]
    make_graph_decode: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any] | None = None


def flashinfer_ops(device: torch.device, prefill_backend: str = "fa2") -> FlashInferOps:
    """Real flashinfer wrappers sharing one float workspace on `device`.

    Decode uses tensor cores (flashinfer's fa2 prefill kernel at query length 1), so decode and
    prefill share one JIT-compiled module per dtype and head size.
    """
    from parrotlet_kernels.registry import BackendUnavailableError

    try:
        import flashinfer
    except ImportError as exc:
        raise BackendUnavailableError(f"flashinfer backend is not available: {exc}") from exc
    workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=device)

    def make_graph_decode(indptr: torch.Tensor, indices: torch.Tensor, last: torch.Tensor) -> Any:
        return flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            workspace,
            "NHD",
            use_cuda_graph=True,
            use_tensor_cores=True,
            paged_kv_indptr_buffer=indptr,
            paged_kv_indices_buffer=indices,
            paged_kv_last_page_len_buffer=last,
        )

    return FlashInferOps(
        make_decode=lambda: flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            workspace, "NHD", use_tensor_cores=True
        ),
        make_prefill=lambda: flashinfer.BatchPrefillWithPagedKVCacheWrapper(
            workspace, "NHD", backend=prefill_backend
        ),
        merge_state_in_place=flashinfer.merge_state_in_place,
        make_graph_decode=make_graph_decode,
    )


class PlanFence:
    """Keeps plan() from rewriting pinned host buffers whose copies have not run yet.

    flashinfer's plan() copies its host-side schedule from a pinned buffer to the device
    asynchronously and rewrites that buffer on the next plan(). When the host runs ahead of the
    device (async scheduling), the next plan() could overwrite it before the copy ran; `wait()`
    at the start of a plan blocks until the previous plan's copies are done (at once in
    practice: they run first in the step the device starts next), `passed()` marks the end.
    """

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._event: torch.cuda.Event | None = None

    def wait(self) -> None:
        if self._event is not None and not self._event.query():
            self._event.synchronize()

    def passed(self) -> None:
        if self._cuda:
            self._event = torch.cuda.Event()
            self._event.record()


@dataclass(frozen=True)
class _Plan:
    """What forward() needs for one step, built once by plan()."""

    num_tokens: int
    key_rows: torch.Tensor  # [num_tokens] int64, cache rows of this step's keys (values: + bs)
    value_rows: torch.Tensor  # [num_tokens] int64
    order: torch.Tensor | None  # [num_tokens] int32, work-order row -> token
    inverse: torch.Tensor | None  # [num_tokens] int32, token -> work-order row
    own: tuple[tuple[slice, Any], ...]  # (rows, planned decode / prefill wrapper)
    shared: tuple[slice, Any] | None  # (rows, planned shared-prefix wrapper)


class FlashInferBackend:
    """Paged attention with flashinfer kernels on CUDA, float16 / bfloat16; see AttentionBackend.

    plan() does host work proportional to the number of sequences plus one host->device copy of
    the request table and token order (flashinfer's own plan copies its small indptr arrays);
    page ids are gathered from `block_tables` on the device, so nothing waits on the GPU.
    Sequences with one query token go to the decode wrapper, the rest to the causal paged prefill
    wrapper (chunked prefill over cached KV included). Prefix groups that `cascade` accepts are
    attended in a third, non-causal call over their shared prefix, one request per group, and
    merged by log-sum-exp into their members' suffix attention; any number of groups per batch.
    """

    def __init__(
        self,
        spec: AttentionSpec,
        kv_caches: Sequence[torch.Tensor],
        *,
        cascade: CascadePolicy | None = None,
        ops: FlashInferOps | None = None,
    ) -> None:
        _check_caches(spec, kv_caches)
        if ops is None:
            _check_supported(spec)
            ops = flashinfer_ops(spec.device)
        self.spec = spec
        self.kv_caches = kv_caches
        # Off unless asked for: end to end on an H100 (Llama-3-8B arch, 64 requests sharing a
        # 5000-token prompt, parrotlet bench shared-prompt) the eager cascade steps took 2.2x as
        # long as CUDA-graph decode over the shared blocks, though they save 1.3 GB per layer.
        self.cascade = cascade or CascadePolicy("never")
        self._ops = ops
        self._decode, self._prefill, self._shared = (
            ops.make_decode(),
            ops.make_prefill(),
            ops.make_prefill(),
        )
        self._rows = [c.view(-1, spec.num_kv_heads, spec.head_dim) for c in kv_caches]
        self._plan: _Plan | None = None
        self._fence = PlanFence(spec.device)

    def cascaded_groups(self, groups: Sequence[PrefixGroup]) -> list[PrefixGroup]:
        """The groups whose shared prefix plan() attends once per group (the cascade policy)."""
        block_bytes = self.spec.block_bytes
        return [
            g
            for g in groups
            if self.cascade.use_cascade(len(g.seq_indices), g.num_blocks * block_bytes)
        ]

    def plan(self, metadata: AttentionMetadata) -> None:
        """Check the host side of `metadata` (ValueError) and plan this step's kernels."""
        validate_metadata(metadata, self.spec, device=False)
        self._fence.wait()
        spec = self.spec
        groups = self.cascaded_groups(metadata.prefix_groups)
        layout = plan_step(
            metadata.query_lens_host, metadata.seq_lens_host, groups, spec.block_size
        )
        pages, order, inverse = self._to_device(layout, metadata.block_tables)
        slots = metadata.slot_mapping.long()  # [num_tokens]
        key_rows = (slots // spec.block_size) * (2 * spec.block_size) + slots % spec.block_size
        own = tuple(
            (slice(call.row_start, call.row_end), self._plan_call(wrapper, call, pages, causal))
            for call, wrapper, causal in (
                (layout.decode, self._decode, None),
                (layout.prefill, self._prefill, True),
            )
            if call is not None
        )
        shared = None
        if layout.shared is not None:
            call = layout.shared
            wrapper = self._plan_call(self._shared, call, pages, False)
            shared = (slice(call.row_start, call.row_end), wrapper)
        self._plan = _Plan(
            metadata.num_tokens, key_rows, key_rows + spec.block_size, order, inverse, own, shared
        )
        self._fence.passed()

    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        v: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        layer: int,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        """Write k/v at the planned slots of `layer`'s cache, then attend every query causally."""
        plan = self._checked_plan(q)
        rows = self._rows[layer]  # [num_blocks * 2 * block_size, num_kv_heads, head_dim]
        rows.index_copy_(0, plan.key_rows, k.to(rows.dtype))
        rows.index_copy_(0, plan.value_rows, v.to(rows.dtype))
        cache = self.kv_caches[layer]
        work_q = q.contiguous() if plan.order is None else q.index_select(0, plan.order)
        out = torch.empty_like(work_q)  # [num_tokens, num_heads, head_dim], work order
        lse = None
        if plan.shared is not None:  # base-2 LSE, [num_tokens, num_heads]
            lse = torch.empty(work_q.shape[:2], dtype=torch.float32, device=q.device)
        for rows_slice, wrapper in plan.own:
            wrapper.run(
                work_q[rows_slice],
                cache,
                out=out[rows_slice],
                lse=None if lse is None else lse[rows_slice],
                return_lse=lse is not None,
            )
        if plan.shared is not None and lse is not None:
            rows_slice, wrapper = plan.shared
            prefix_out, prefix_lse = wrapper.run(work_q[rows_slice], cache, return_lse=True)
            self._ops.merge_state_in_place(out[rows_slice], lse[rows_slice], prefix_out, prefix_lse)
        return out if plan.inverse is None else out.index_select(0, plan.inverse)

    def _checked_plan(self, q: torch.Tensor) -> _Plan:
        if self._plan is None:
            raise RuntimeError("forward() called before plan()")
        if q.shape[0] != self._plan.num_tokens:
            raise ValueError(f"q has {q.shape[0]} tokens, the plan has {self._plan.num_tokens}")
        return self._plan

    def _to_device(
        self, layout: StepLayout, block_tables: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """One host->device copy; returns page ids, token order and its inverse (device)."""
        num_reqs, order = len(layout.req_row), layout.order or ()
        inverse = [0] * len(order)
        for row, token in enumerate(order):
            inverse[token] = row
        host = torch.tensor(
            [*layout.req_row, *layout.req_first_page, *layout.req_num_pages, *order, *inverse],
            dtype=torch.int32,
        )
        packed = host.to(block_tables.device, non_blocking=True)
        reqs = packed[: 3 * num_reqs].view(3, num_reqs)
        pages = gather_page_indices(
            block_tables, reqs[0], reqs[1], reqs[2], sum(layout.req_num_pages)
        )  # [total_pages] int32
        if not order:
            return pages, None, None
        tokens = packed[3 * num_reqs :].view(2, len(order))
        return pages, tokens[0], tokens[1]

    def _plan_call(
        self, wrapper: Any, call: PagedCall, pages: torch.Tensor, causal: bool | None
    ) -> Any:
        """Plan `wrapper` for `call`; causal None means the decode wrapper's signature."""
        spec = self.spec
        host = torch.tensor
        indices = pages[call.page_start : call.page_start + call.kv_indptr[-1]]
        kv_indptr = host(call.kv_indptr, dtype=torch.int32)
        last = host(call.last_page_len, dtype=torch.int32)
        heads = (spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.block_size)
        kwargs = dict(q_data_type=spec.dtype, kv_data_type=spec.dtype, sm_scale=spec.scale)
        if causal is None:
            wrapper.plan(kv_indptr, indices, last, *heads, **kwargs)
        else:
            qo_indptr = host(call.qo_indptr, dtype=torch.int32)
            wrapper.plan(qo_indptr, kv_indptr, indices, last, *heads, causal=causal, **kwargs)
        return wrapper


class GraphDecodeAttention:
    """Paged decode over fixed device buffers: plan() outside a CUDA graph, forward() inside.

    One object serves every graph batch size up to `max_batch_size`, one flashinfer wrapper (in
    CUDA-graph mode) per size, all sharing the page-table buffers (one graph runs at a time).
    Each row is one sequence with one query token. `plan(slots, ...)` reads the rows' cache slots
    from a device tensor the caller filled, so a step costs the caller's single host->device copy
    plus one of the plan's own (flashinfer's schedule, or the Triton kernel's page tables, which
    read the caller's `pages` in place). forward() writes k/v at those slots, then attends; it does
    only device work, so a graph captured once per batch size replays any later plan of that size.
    Each plan names its kernel, one of `kernels`: "flashinfer", or "triton", parrotlet's fused
    append + paged decode (triton_paged_decode.py; one launch, plus a merge where it splits the
    KV). `kernel` "auto" allows both (the caller picks per step: `triton_decode_wins`). With
    `prefix_tiles`, a plan may carry prefix tiles (triton_prefix_tiles.py, laid out by the caller
    for `prefix_shape(batch size)`): that step runs the Triton kernel plus the launch that reads
    each shared prefix once per tile. A graph captured after a plan serves only plans of the same
    kernel and tiles. Where the Triton kernel runs, `applies_rope` is true: the model hands over q
    and k unrotated with a `Rope`, and the kernel rotates them; with `programmatic` it is launched
    with PDL where the device supports it (programmatic_launch.py).
    """

    def __init__(
        self,
        backend: FlashInferBackend,
        max_batch_size: int,
        max_pages: int,
        kernel: str = "flashinfer",
        prefix_tiles: bool = False,
        programmatic: bool = False,
    ) -> None:
        if kernel not in ("flashinfer", "triton", "auto"):
            raise ValueError(f"kernel must be flashinfer, triton or auto, got {kernel!r}")
        self.kernels = ("flashinfer", "triton") if kernel == "auto" else (kernel,)
        if "flashinfer" in self.kernels and backend._ops.make_graph_decode is None:
            raise ValueError("the backend's FlashInferOps has no make_graph_decode")
        self.spec, self.kv_caches = backend.spec, backend.kv_caches
        self._rows, self._make = backend._rows, backend._ops.make_graph_decode
        device, i32 = self.spec.device, torch.int32
        self._indptr = torch.zeros(max_batch_size + 1, dtype=i32, device=device)
        self._indices = torch.zeros(max_pages, dtype=i32, device=device)
        self._last = torch.zeros(max_batch_size, dtype=i32, device=device)
        self._key_rows = torch.zeros(max_batch_size, dtype=torch.long, device=device)
        self._value_rows = torch.zeros(max_batch_size, dtype=torch.long, device=device)
        self._wrappers: dict[int, Any] = {}
        self._fence = PlanFence(device)
        self._splits: dict[int, int] = {}
        self.prefix_tiles = prefix_tiles
        self.programmatic = programmatic
        self.planned_kernel = self.kernels[0]  # the last plan's
        self.with_prefix = False  # whether the last plan has prefix tiles
        # The Triton kernel's tables, one copy a plan: kv_indptr, last_page_len, tile tables
        self._tables = torch.zeros(self._tables_len(max_batch_size), dtype=i32, device=device)
        self._pages = self._indices  # the Triton kernel's page ids: the last plan's `pages`

    @property
    def max_pages(self) -> int:
        return self._indices.numel()

    @property
    def applies_rope(self) -> bool:
        """Whether forward() rotates q and k itself (the Triton kernel runs the planned step)."""
        return self.planned_kernel == "triton"

    def prefix_shape(self, batch_size: int) -> TileShape:
        """The prefix-tile launch of a graph of `batch_size` rows (Triton kernel)."""
        from parrotlet_kernels.triton_paged_decode import num_sms

        spec = self.spec
        group = spec.num_heads // spec.num_kv_heads
        return tile_shape(batch_size, group, spec.num_kv_heads, num_sms(spec.device))

    def plan(
        self,
        slots: torch.Tensor,  # [batch_size] int, cache slot of each row's new token (device)
        kv_indptr: Sequence[int],  # [batch_size + 1], row r reads pages[kv_indptr[r]:...[r+1]]
        last_page_len: Sequence[int],  # [batch_size]
        pages: torch.Tensor,  # [>= kv_indptr[-1]] int32 page ids (device)
        tiles: TiledPages | None = None,  # the prefix tiles (Triton), `pages` in its layout
        kernel: str | None = None,  # one of `kernels`; None: the first (Triton with tiles)
    ) -> None:
        """Fill the buffers of batch size `len(last_page_len)`; no device sync."""
        batch_size, spec, bs = len(last_page_len), self.spec, self.spec.block_size
        if pages.numel() > self.max_pages:
            raise ValueError(f"{pages.numel()} pages exceed the buffer of {self.max_pages}")
        if tiles is not None and not self.prefix_tiles:
            raise ValueError("prefix tiles need GraphDecodeAttention(prefix_tiles=True)")
        allowed = ("triton",) if tiles is not None else self.kernels
        kernel = kernel or allowed[0]
        if kernel not in allowed:
            raise ValueError(f"kernel {kernel!r} cannot run this plan; it allows {allowed}")
        self._fence.wait()
        key_rows, value_rows = self._key_rows[:batch_size], self._value_rows[:batch_size]
        torch.add(slots, slots.div(bs, rounding_mode="floor") * bs, out=key_rows)
        torch.add(key_rows, bs, out=value_rows)
        self.with_prefix, self.planned_kernel = tiles is not None, kernel
        if kernel == "triton":  # read on the device: `pages` as given, the rest in one copy
            tables = [*kv_indptr, *last_page_len]
            if tiles is not None:
                tables += tiles.tile_rows + tiles.tile_pages
            copy_to_device(tables, self._tables)
            self._pages = pages
            return
        wrapper = self._wrapper(batch_size)
        wrapper.plan(
            torch.tensor(kv_indptr, dtype=torch.int32),
            pages,
            torch.tensor(last_page_len, dtype=torch.int32),
            spec.num_heads,
            spec.num_kv_heads,
            spec.head_dim,
            bs,
            q_data_type=spec.dtype,
            kv_data_type=spec.dtype,
            sm_scale=spec.scale,
        )
        self._fence.passed()

    def forward(
        self,
        q: torch.Tensor,  # [batch_size, num_heads, head_dim]
        k: torch.Tensor,  # [batch_size, num_kv_heads, head_dim]
        v: torch.Tensor,  # [batch_size, num_kv_heads, head_dim]
        layer: int,
        rope: Rope | None = None,
    ) -> torch.Tensor:  # [batch_size, num_heads, head_dim]
        """Write k/v at the planned slots of `layer`'s cache, then decode every row (rotating q
        and k first when given `rope`, which needs `applies_rope`)."""
        batch_size = q.shape[0]
        if self.applies_rope:
            return self._triton_forward(q, k, v, layer, rope)
        if rope is not None:
            raise ValueError("this plan's kernel (flashinfer) does not apply RoPE")
        rows = self._rows[layer]  # [num_blocks * 2 * block_size, num_kv_heads, head_dim]
        rows.index_copy_(0, self._key_rows[:batch_size], k.to(rows.dtype))
        rows.index_copy_(0, self._value_rows[:batch_size], v.to(rows.dtype))
        return self._wrappers[batch_size].run(q.contiguous(), self.kv_caches[layer])

    def _triton_forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, rope: Rope | None
    ) -> torch.Tensor:
        from parrotlet_kernels.triton_paged_decode import num_sms, paged_decode, plan_splits

        batch_size, spec = q.shape[0], self.spec
        if batch_size not in self._splits:
            sms = num_sms(spec.device)
            self._splits[batch_size] = plan_splits(batch_size, spec.num_kv_heads, sms)
        b, tables = batch_size, self._tables
        return paged_decode(
            q, k.to(spec.dtype), v.to(spec.dtype), self.kv_caches[layer],
            tables[: b + 1], self._pages, tables[b + 1 : 2 * b + 1],
            self._key_rows[:b], self._splits[b], scale=spec.scale,
            prefix=self._prefix_tiles(b) if self.with_prefix else None, rope=rope,
            programmatic=self.programmatic,
        )  # fmt: skip

    def _tables_len(self, batch_size: int) -> int:
        """Elements of the Triton tables of `batch_size` rows: kv_indptr, last_page_len, then
        with prefix tiles the tile rows and tile pages (`_prefix_tiles`)."""
        if not self.prefix_tiles:
            return 2 * batch_size + 1
        shape = self.prefix_shape(batch_size)
        return 2 * batch_size + 1 + shape.max_tiles * (shape.rows_per_tile + 2)

    def _prefix_tiles(self, batch_size: int) -> PrefixTiles:
        """Views of the tile tables in the layout of `batch_size` (tile rows, then pages)."""
        shape = self.prefix_shape(batch_size)
        rows_at = 2 * batch_size + 1
        pages_at = rows_at + shape.max_tiles * shape.rows_per_tile
        return PrefixTiles(
            self._tables[rows_at:pages_at].view(shape.max_tiles, shape.rows_per_tile),
            self._tables[pages_at : pages_at + 2 * shape.max_tiles].view(shape.max_tiles, 2),
            shape,
        )

    def _wrapper(self, batch_size: int) -> Any:
        if batch_size not in self._wrappers:
            self._wrappers[batch_size] = self._make(
                self._indptr[: batch_size + 1], self._indices, self._last[:batch_size]
            )
        return self._wrappers[batch_size]


def copy_to_device(values: Sequence[int], out: torch.Tensor) -> None:
    """Write host ints into the front of the int32 tensor `out` with one asynchronous copy
    (staged in pinned memory on CUDA, whose caching allocator keeps it until the copy ran)."""
    host = torch.tensor(values, dtype=torch.int32)
    if out.is_cuda:
        host = host.pin_memory()
    out[: host.numel()].copy_(host, non_blocking=True)


def _check_caches(spec: AttentionSpec, kv_caches: Sequence[torch.Tensor]) -> None:
    if len(kv_caches) != spec.num_layers:
        raise ValueError(f"got {len(kv_caches)} kv_caches, spec has {spec.num_layers} layers")
    for layer, cache in enumerate(kv_caches):
        if tuple(cache.shape) != spec.kv_cache_shape or cache.dtype != spec.dtype:
            raise ValueError(
                f"kv_caches[{layer}] is {tuple(cache.shape)} {cache.dtype}, "
                f"expected {spec.kv_cache_shape} {spec.dtype}"
            )
        if not cache.is_contiguous():
            raise ValueError(f"kv_caches[{layer}] must be contiguous")


def _check_supported(spec: AttentionSpec) -> None:
    """flashinfer's kernels: CUDA only, 16-bit floats, head sizes 64 / 128 / 256."""
    if spec.device.type != "cuda":
        raise ValueError(f"the flashinfer backend needs a CUDA device, spec has {spec.device}")
    if spec.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(
            f"the flashinfer backend needs float16 or bfloat16, spec has {spec.dtype} "
            "(use the reference backend)"
        )
    if spec.head_dim not in (64, 128, 256):
        raise ValueError(
            f"the flashinfer backend needs head_dim 64, 128 or 256, got {spec.head_dim}"
        )
