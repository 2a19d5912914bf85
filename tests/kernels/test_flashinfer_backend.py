"""FlashInferBackend against the torch reference: its planning on CPU (torch fakes of flashinfer's
wrappers), and the real kernels on the GPU (`-m gpu`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from itertools import accumulate

import pytest
import torch

from parrotlet_kernels.attention_math import attention_with_lse, merge_attention_states
from parrotlet_kernels.flashinfer_backend import FlashInferBackend, FlashInferOps
from parrotlet_kernels.flashinfer_plan import (
    CascadePolicy,
    PagedCall,
    gather_page_indices,
    plan_step,
)
from parrotlet_kernels.graph_decode import GraphDecodeAttention
from parrotlet_kernels.interface import AttentionMetadata, AttentionSpec, PrefixGroup, Rope
from parrotlet_kernels.reference import TorchReferenceBackend
from parrotlet_kernels.triton_prefix_tiles import TiledPages, tile_prefixes

from .attention_helpers import make_batch, make_spec, requires_triton, run_under_triton_interpreter
from .test_triton_paged_decode import cos_sin_cache, rotate

# (seq_len, query_len) per sequence; groups as (members, shared prefix in tokens)
Case = tuple[list[tuple[int, int]], list[tuple[list[int], int]]]
CASES: dict[str, Case] = {
    "decode": ([(37, 1), (1, 1), (160, 1), (16, 1), (65, 1)], []),
    "prefill": ([(50, 50), (7, 7), (129, 129)], []),
    "chunked": ([(100, 30), (64, 16), (33, 33), (200, 1)], []),
    "mixed": ([(40, 1), (100, 30), (33, 33), (17, 1), (2, 1), (90, 7)], []),
    "groups": (
        [(70, 1), (90, 1), (75, 6), (200, 1), (50, 50), (81, 1), (100, 1), (40, 8), (66, 1)],
        [([0, 1, 2], 64), ([5, 6, 7], 32), ([3, 8], 48)],
    ),
    "group_only": ([(40, 1), (41, 1), (50, 3)], [([0, 1, 2], 32)]),
    "decode_groups": (
        [(70, 1), (90, 1), (75, 1), (200, 1), (81, 1)],
        [([0, 1, 2], 64), ([3, 4], 48)],
    ),
}
HEADS = [(4, 4), (32, 8), (16, 2)]  # GQA ratios 1, 4, 8
LN2 = math.log(2.0)


# ---- torch fakes of the flashinfer wrappers (the CPU tests' stand-in) ------------------------
class TorchPagedWrapper:
    """flashinfer's paged decode / prefill wrapper plan+run in torch; LSE in base 2 like it."""

    def __init__(self, decode: bool) -> None:
        self.decode = decode
        self.planned: dict | None = None

    def plan(self, *args, causal: bool = False, sm_scale: float, **_: object) -> None:
        if self.decode:
            kv_indptr, indices, last, *_, page_size = args
            qo_indptr = torch.arange(len(last) + 1)
        else:
            qo_indptr, kv_indptr, indices, last, *_, page_size = args
        assert not causal or not self.decode
        self.planned = dict(
            qo=qo_indptr.tolist(),
            kv=kv_indptr.tolist(),
            pages=indices.tolist(),
            last=last.tolist(),
            page_size=page_size,
            causal=causal,
            scale=sm_scale,
        )

    def run(self, q, cache, out=None, lse=None, return_lse=False):
        p = self.planned
        assert p is not None and q.shape[0] == p["qo"][-1]
        out = torch.empty_like(q) if out is None else out
        lse = torch.empty(q.shape[:2]) if lse is None else lse
        for r in range(len(p["last"])):
            pages = p["pages"][p["kv"][r] : p["kv"][r + 1]]
            kv_len = (len(pages) - 1) * p["page_size"] + p["last"][r]
            kv = cache[pages]  # [pages, 2, page_size, kv_heads, head_dim]
            keys = kv[:, 0].flatten(0, 1)[:kv_len]
            values = kv[:, 1].flatten(0, 1)[:kv_len]
            rows = slice(p["qo"][r], p["qo"][r + 1])
            n = rows.stop - rows.start
            mask = None
            if p["causal"]:
                mask = torch.arange(kv_len)[None, :] <= (kv_len - n + torch.arange(n))[:, None]
            o, s = attention_with_lse(
                q[rows].float(), keys.float(), values.float(), p["scale"], mask
            )
            out[rows], lse[rows] = o.to(out.dtype), s / LN2
        return (out, lse) if return_lse else out


def fake_merge_state_in_place(v, s, v_other, s_other) -> None:
    merged, merged_lse = merge_attention_states(v.float(), s * LN2, v_other.float(), s_other * LN2)
    v.copy_(merged)
    s.copy_(merged_lse / LN2)


FAKE_OPS = FlashInferOps(
    make_decode=lambda: TorchPagedWrapper(decode=True),
    make_prefill=lambda: TorchPagedWrapper(decode=False),
    merge_state_in_place=fake_merge_state_in_place,
    make_graph_decode=lambda indptr, indices, last: TorchPagedWrapper(decode=True),
)


# ---- builders --------------------------------------------------------------------------------
def build(
    case: Case,
    heads: tuple[int, int] = (6, 2),
    head_dim: int = 16,
    block_size: int = 4,
    dtype: torch.dtype = torch.float32,
    num_layers: int = 1,
    seed: int = 0,
    num_blocks: int | None = None,
) -> tuple:
    """(spec, metadata, caches, q, k, v) for a case; the pool has 8 spare blocks by default."""
    seqs, groups = case
    needed = sum(-(-s // block_size) for s, _ in seqs)
    needed -= sum((len(members) - 1) * (tokens // block_size) for members, tokens in groups)
    spec = make_spec(*heads, head_dim, block_size, num_blocks or needed + 8, num_layers, dtype)
    block_groups = [(members, tokens // block_size) for members, tokens in groups]
    return (spec, *make_batch(spec, seqs, block_groups, seed=seed))


def run_backend(backend, metadata, q, k, v) -> list[torch.Tensor]:
    backend.plan(metadata)
    return [backend.forward(q, k, v, layer) for layer in range(backend.spec.num_layers)]


def compare(spec, metadata, caches, q, k, v, make_fast, atol: float, rtol: float) -> None:
    """The fast backend's outputs and cache writes equal the reference's on clones of caches."""
    ref_caches = [c.clone() for c in caches]
    fast_caches = [c.clone() for c in caches]
    expected = run_backend(TorchReferenceBackend(spec, ref_caches), metadata, q, k, v)
    actual = run_backend(make_fast(spec, fast_caches), metadata, q, k, v)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol)
    for a, e in zip(fast_caches, ref_caches, strict=True):
        assert torch.equal(a, e)


# ---- CPU: the pure planning helpers ---------------------------------------------------------
def test_plan_step_orders_rows_and_lays_out_calls():
    query_lens = [1, 3, 1, 1, 2]  # seq 0, 2, 3 decode; 1 and 4 prefill
    seq_lens = [9, 11, 6, 12, 8]
    groups = [PrefixGroup((3, 1), 2)]  # prefix of 2 blocks of 4 tokens
    layout = plan_step(query_lens, seq_lens, groups, block_size=4)
    # work order: ungrouped decodes 0, 2 | grouped decode 3 | grouped prefill 1 | prefill 4
    assert layout.order == (0, 4, 5, 1, 2, 3, 6, 7)
    assert layout.decode == PagedCall(0, 3, (0, 1, 2, 3), (0, 3, 5, 6), (1, 2, 4), 0)
    assert layout.prefill == PagedCall(3, 8, (0, 3, 5), (0, 1, 3), (3, 4), 6)
    assert layout.shared == PagedCall(2, 6, (0, 1, 4), (0, 2, 4), (4, 4), 9)
    assert layout.req_row == (0, 2, 3, 1, 4, 3, 1)
    assert layout.req_first_page == (0, 0, 2, 2, 0, 0, 0)
    assert layout.req_num_pages == (3, 2, 1, 1, 2, 2, 2)


def test_plan_step_keeps_identity_order_without_cascade():
    layout = plan_step([1, 1, 4], [5, 8, 4], [], block_size=4)
    assert layout.order is None
    assert layout.shared is None
    assert layout.decode == PagedCall(0, 2, (0, 1, 2), (0, 2, 4), (1, 4), 0)
    assert layout.prefill == PagedCall(2, 6, (0, 4), (0, 1), (4,), 4)


def test_gather_page_indices():
    tables = torch.tensor([[7, 8, 9, 0], [3, 4, 5, 6]], dtype=torch.int32)
    pages = gather_page_indices(
        tables, torch.tensor([1, 0, 1]), torch.tensor([1, 0, 0]), torch.tensor([3, 2, 1]), 6
    )
    assert pages.tolist() == [4, 5, 6, 7, 8, 3]
    assert pages.dtype == torch.int32


def test_cascade_policy_rule():
    auto = CascadePolicy()
    mib = 1 << 20  # Llama-3-8B KV: 4 KiB per token per layer
    assert auto.use_cascade(64, 32 * mib)  # batch 64, 8K-token prefix: saves 2016 MiB
    assert auto.use_cascade(128, 16 * mib)  # batch 128, 4K prefix: 2032 MiB
    assert not auto.use_cascade(64, 16 * mib)  # batch 64, 4K prefix: 1008 MiB
    assert not auto.use_cascade(256, 4 * mib)  # batch 256, 1K prefix: 1020 MiB
    assert CascadePolicy("always").use_cascade(2, 1)
    assert not CascadePolicy("never").use_cascade(10**6, 10**9)
    with pytest.raises(ValueError, match="mode must be auto, always or never"):
        CascadePolicy("sometimes")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["never", "always", "auto"])
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("heads", [(4, 4), (6, 2)])
@pytest.mark.parametrize("block_size", [1, 4])
def test_fake_kernels_match_reference(mode, name, heads, block_size):
    spec, metadata, caches, q, k, v = build(CASES[name], heads, block_size=block_size, num_layers=2)

    def make_fast(spec, caches):
        return FlashInferBackend(spec, caches, cascade=CascadePolicy(mode), ops=FAKE_OPS)

    compare(spec, metadata, caches, q, k, v, make_fast, atol=1e-5, rtol=1e-5)


def test_plan_uses_cascade_only_for_accepted_groups():
    spec, metadata, caches, *_ = build(CASES["groups"], block_size=4)
    policy = CascadePolicy(min_saved_bytes=1)
    backend = FlashInferBackend(spec, caches, cascade=policy, ops=FAKE_OPS)
    backend.plan(metadata)
    assert backend._plan is not None and backend._plan.shared is not None
    per_token = 2 * spec.num_kv_heads * spec.head_dim * 4
    big = CascadePolicy(min_saved_bytes=2 * 64 * per_token)  # group 0 only
    backend.cascade = big
    backend.plan(metadata)
    rows, _ = backend._plan.shared
    assert rows == slice(4, 12)  # group 0: decodes 0, 1 then the 6 query tokens of 2


def check_graph_decode_padding(
    kernel: str = "flashinfer",
    block_size: int = 4,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    tol: float = 1e-5,
    case: str = "decode",
    rope: bool = False,
) -> None:
    """5 decodes padded to 8 rows: real rows equal the reference; padding writes only one slot
    past the end of sequence 0. flashinfer runs as torch fakes; Triton runs its kernel. A case
    with prefix groups is planned with prefix tiles (Triton, whatever `kernel` is); with `rope`
    the graph attention gets q and k unrotated (padding rows at position 0: no rotation)."""
    spec, metadata, caches, q, k, v = build(
        CASES[case], block_size=block_size, num_layers=2, dtype=dtype
    )
    tables, lens = metadata.block_tables.tolist(), metadata.seq_lens_host
    positions = torch.tensor([n - 1 for n in lens] + [0] * 3, dtype=torch.int32)
    rotation = Rope(positions.to(device), cos_sin_cache(max(lens), spec.head_dim, device))
    q_ref, k_ref = q, k
    if rope:
        cpu_rotation = Rope(positions[:5], rotation.cos_sin.cpu())
        q_ref, k_ref = rotate(q, cpu_rotation), rotate(k, cpu_rotation)
    ref_caches = [c.clone() for c in caches]
    expected = run_backend(TorchReferenceBackend(spec, ref_caches), metadata, q_ref, k_ref, v)
    pad_slot = int(metadata.slot_mapping[0]) + 1
    pages = [b for t, n in zip(tables, lens, strict=True) for b in t[: -(-n // block_size)]]
    kv_indptr = [0, *accumulate(-(-n // block_size) for n in lens)]
    spec = dataclasses.replace(spec, device=torch.device(device))
    backend = FlashInferBackend(spec, [c.to(device) for c in caches], ops=FAKE_OPS)
    graph = GraphDecodeAttention(backend, 8, len(pages) + 8, kernel, prefix_tiles=True)
    kv_indptr += [kv_indptr[-1] + 1 + i for i in range(3)]
    pages += [tables[0][0]] * 3
    tiles = None
    if metadata.prefix_groups:
        tiles = tile_prefixes(kv_indptr, pages, metadata.prefix_groups, graph.prefix_shape(8))
        kv_indptr, pages = tiles.kv_indptr, tiles.pages
    graph.plan(
        torch.tensor(metadata.slot_mapping.tolist() + [pad_slot] * 3, device=device),
        kv_indptr,
        [(n - 1) % block_size + 1 for n in lens] + [1] * 3,
        torch.tensor(pages, dtype=torch.int32, device=device),
        tiles,
    )
    assert graph.with_prefix == (tiles is not None)
    pad_q = torch.randn(3, *q.shape[1:]).to(dtype)
    pad_kv = torch.randn(1, *k.shape[1:]).to(dtype).expand(3, -1, -1)  # duplicate writes agree
    padded = [torch.cat(x).to(device) for x in ([q, pad_q], [k, pad_kv], [v, pad_kv])]
    for layer in range(spec.num_layers):
        out = graph.forward(*padded, layer, rope=rotation if rope else None).cpu()
        torch.testing.assert_close(out[:5].float(), expected[layer].float(), atol=tol, rtol=tol)
        block, offset = divmod(pad_slot, block_size)
        written = backend.kv_caches[layer].cpu()
        assert torch.equal(written[block, :, offset], pad_kv[-1].expand(2, -1, -1))
        written[block, :, offset] = ref_caches[layer][block, :, offset]
        if rope:  # rotated keys: up to one rounding step (the kernel may fuse multiply-adds)
            torch.testing.assert_close(written, ref_caches[layer], atol=1e-2, rtol=1e-2)
        else:
            assert torch.equal(written, ref_caches[layer])


def test_graph_decode_padding_leaves_live_kv_alone():
    check_graph_decode_padding()


@requires_triton
def test_triton_graph_decode_under_the_interpreter():
    """The Triton kernel (float16, page 16: the interpreter mishandles bfloat16); then a step
    with two prefix groups through the prefix tiles, in a graph whose plain kernel is
    flashinfer's (faked)."""
    code = "from tests.kernels.test_flashinfer_backend import check_graph_decode_padding as c; "
    code += "import torch; c('triton', 16, torch.float16, tol=2e-2); "
    code += "c('flashinfer', 16, torch.float16, tol=2e-2, case='decode_groups', rope=True)"
    run_under_triton_interpreter(code)


def test_prefix_tiles_and_rope_need_the_triton_kernel():
    spec, _, caches, q, k, v = build(CASES["decode"])
    graph = GraphDecodeAttention(FlashInferBackend(spec, caches, ops=FAKE_OPS), 8, 64)
    plan = (torch.zeros(1, dtype=torch.long), [0, 1], [1], torch.zeros(1, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"prefix tiles need GraphDecodeAttention\(prefix_tiles"):
        graph.plan(*plan, TiledPages([0, 1], [0], [0], [0, 0]))
    with pytest.raises(ValueError, match=r"kernel 'triton' cannot run this plan; it allows \('fl"):
        graph.plan(*plan, kernel="triton")
    graph.plan(*plan)
    assert not graph.applies_rope and graph.planned_kernel == "flashinfer"
    rope = Rope(torch.zeros(1, dtype=torch.int32), torch.zeros(4, spec.head_dim))
    with pytest.raises(ValueError, match=r"this plan's kernel \(flashinfer\) does not apply"):
        graph.forward(q[:1], k[:1], v[:1], 0, rope=rope)
    auto = GraphDecodeAttention(FlashInferBackend(spec, caches, ops=FAKE_OPS), 8, 64, "auto")
    assert auto.kernels == ("flashinfer", "triton")
    auto.plan(*plan, kernel="triton")
    assert auto.applies_rope and auto.planned_kernel == "triton"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_graph_decode_on_gpu(dtype):
    check_graph_decode_padding("triton", 16, dtype, device="cuda", tol=2e-2)
    check_graph_decode_padding("flashinfer", 16, dtype, "cuda", 2e-2, "decode_groups", rope=True)


def test_graph_decode_kernel_must_be_known():
    spec, _, caches, *_ = build(CASES["decode"])
    backend = FlashInferBackend(spec, caches, ops=FAKE_OPS)
    with pytest.raises(ValueError, match="kernel must be flashinfer, triton or auto, got 'cuda'"):
        GraphDecodeAttention(backend, max_batch_size=8, max_pages=64, kernel="cuda")


def test_forward_before_plan_and_token_mismatch():
    spec, metadata, caches, q, k, v = build(CASES["decode"])
    backend = FlashInferBackend(spec, caches, ops=FAKE_OPS)
    with pytest.raises(RuntimeError, match="before plan"):
        backend.forward(q, k, v, 0)
    backend.plan(metadata)
    with pytest.raises(ValueError, match="q has 4 tokens, the plan has 5"):
        backend.forward(q[:4], k[:4], v[:4], 0)


def test_unsupported_spec_is_a_clear_error():
    spec = make_spec(head_dim=128)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        FlashInferBackend(spec, spec.allocate_kv_cache())


def _has_flashinfer() -> bool:
    try:
        import flashinfer  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_has_flashinfer(), reason="flashinfer is installed here")
def test_registry_reports_missing_flashinfer():
    from parrotlet_kernels.registry import BackendUnavailableError, get_attention_backend

    spec = dataclasses.replace(
        make_spec(head_dim=128, dtype=torch.bfloat16), device=torch.device("cuda")
    )
    with pytest.raises(BackendUnavailableError, match=r"^flashinfer backend is not available: "):
        get_attention_backend("flashinfer", spec, [torch.empty(spec.kv_cache_shape).bfloat16()])


# ---- GPU: the real kernels -------------------------------------------------------------------
BF16_TOL = {"atol": 2e-2, "rtol": 2e-2}


def to_cuda(
    spec: AttentionSpec, metadata: AttentionMetadata, tensors: Sequence[torch.Tensor]
) -> tuple[AttentionSpec, AttentionMetadata, list[torch.Tensor]]:
    cuda = torch.device("cuda")
    moved = {
        f: getattr(metadata, f).to(cuda)
        for f in ("query_start_loc", "seq_lens", "block_tables", "slot_mapping")
    }
    return (
        dataclasses.replace(spec, device=cuda),
        dataclasses.replace(metadata, **moved),
        [t.to(cuda) for t in tensors],
    )


def gpu_compare(case: Case, heads, block_size, mode, dtype=torch.bfloat16, seed=0) -> None:
    spec, metadata, caches, q, k, v = build(case, heads, 128, block_size, dtype, 2, seed)
    spec, metadata, moved = to_cuda(spec, metadata, [*caches, q, k, v])
    caches, (q, k, v) = moved[:-3], moved[-3:]

    def make_fast(spec, caches):
        return FlashInferBackend(spec, caches, cascade=CascadePolicy(mode))

    compare(spec, metadata, caches, q, k, v, make_fast, **BF16_TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["never", "always"])
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("block_size", [1, 16])
def test_flashinfer_matches_reference(mode, name, heads, block_size):
    gpu_compare(CASES[name], heads, block_size, mode)


@pytest.mark.gpu
def test_flashinfer_float16():
    gpu_compare(CASES["groups"], (32, 8), 16, "always", dtype=torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("prefix", [1024, 4096])
def test_large_groups_cascade_equals_plain(prefix):
    """64 decodes over one prefix plus a second 16-member group: cascade == paged == reference."""
    seqs = [(prefix + 1 + 7 * i, 1) for i in range(64)] + [
        (prefix // 2 + 5 + i, 1) for i in range(16)
    ]
    case = (seqs, [(list(range(64)), prefix), (list(range(64, 80)), prefix // 2)])
    spec, metadata, caches, q, k, v = build(case, (32, 8), 128, 16, torch.bfloat16, 1)
    spec, metadata, moved = to_cuda(spec, metadata, [*caches, q, k, v])
    caches, (q, k, v) = moved[:-3], moved[-3:]
    outs = {}
    for mode in ("always", "never"):
        backend = FlashInferBackend(spec, [c.clone() for c in caches], cascade=CascadePolicy(mode))
        outs[mode] = run_backend(backend, metadata, q, k, v)[0]
    expected = run_backend(TorchReferenceBackend(spec, caches), metadata, q, k, v)[0]
    torch.testing.assert_close(outs["always"], outs["never"], atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(outs["always"], expected, **BF16_TOL)


@pytest.mark.gpu
def test_replan_across_steps():
    """One backend instance planned for several different batches over one persistent pool."""
    cuda = torch.device("cuda")
    spec = dataclasses.replace(make_spec(32, 8, 128, 16, 128, 1, torch.bfloat16), device=cuda)
    caches = [torch.randn(spec.kv_cache_shape, device=cuda).bfloat16()]
    backend = FlashInferBackend(spec, caches, cascade=CascadePolicy("always"))
    reference = TorchReferenceBackend(spec, [c.clone() for c in caches])
    for seed, name in enumerate(["groups", "decode", "chunked", "group_only", "mixed"]):
        _, md, _, q, k, v = build(
            CASES[name], (32, 8), 128, 16, torch.bfloat16, seed=seed, num_blocks=128
        )
        _, md, (q, k, v) = to_cuda(spec, md, [q, k, v])
        actual = run_backend(backend, md, q, k, v)[0]
        torch.testing.assert_close(actual, run_backend(reference, md, q, k, v)[0], **BF16_TOL)
    assert torch.equal(caches[0], reference.kv_caches[0])


@pytest.mark.gpu
def test_plan_and_forward_do_not_sync():
    """No host<->device synchronization in plan() or forward() (CUDA sync debug mode)."""
    spec, metadata, caches, q, k, v = build(CASES["groups"], (32, 8), 128, 16, torch.bfloat16)
    spec, metadata, moved = to_cuda(spec, metadata, [*caches, q, k, v])
    caches, (q, k, v) = moved[:-3], moved[-3:]
    backend = FlashInferBackend(spec, caches, cascade=CascadePolicy("always"))
    run_backend(backend, metadata, q, k, v)  # JIT and workspace set-up may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_backend(backend, metadata, q, k, v)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [str(w.message) for w in caught if "synchroniz" in str(w.message)] == []
