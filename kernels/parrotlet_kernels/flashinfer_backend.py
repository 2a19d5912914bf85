"""The flashinfer attention backend: the engine's GPU path behind the AttentionBackend interface.

plan() turns one step's AttentionMetadata into flashinfer paged decode / prefill / shared-prefix
calls (laid out by flashinfer_plan.py); each model layer's forward() writes its k/v into the
paged cache and runs them. graph_decode.py holds the decode-only variant over fixed buffers that
a CUDA graph can capture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from parrotlet_kernels.flashinfer_plan import (
    CascadePolicy,
    PagedCall,
    StepLayout,
    gather_page_indices,
    plan_step,
)
from parrotlet_kernels.interface import AttentionMetadata, AttentionSpec, PrefixGroup
from parrotlet_kernels.validation import validate_metadata

WORKSPACE_BYTES = 128 << 20  # flashinfer's recommended float workspace (split-KV partials)


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
        self.ops = ops  # shared with GraphDecodeAttention (graph_decode.py)
        self._decode, self._prefill, self._shared = (
            ops.make_decode(),
            ops.make_prefill(),
            ops.make_prefill(),
        )
        # each layer's cache as rows of [num_kv_heads, head_dim], for index_copy_ of new k/v
        self.cache_rows = [c.view(-1, spec.num_kv_heads, spec.head_dim) for c in kv_caches]
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
        rows = self.cache_rows[layer]  # [num_blocks * 2 * block_size, num_kv_heads, head_dim]
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
            self.ops.merge_state_in_place(out[rows_slice], lse[rows_slice], prefix_out, prefix_lse)
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
