"""The Triton shared-prefix decode kernel: its launch planning and input checks on CPU, and its
output against plain torch attention over prefix + suffix under Triton's interpreter (CPU) and
on the GPU (`-m gpu`).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from parrotlet_kernels.attention_math import attention_with_lse
from parrotlet_kernels.triton_shared_prefix import (
    SharedPrefixLaunch,
    check_inputs,
    plan_launch,
    shared_prefix_decode,
)

from .attention_helpers import requires_triton, run_under_triton_interpreter

BF16_TOL = {"atol": 2e-2, "rtol": 2e-2}
KERNELS = "parrotlet_kernels.triton_shared_prefix_kernels"

# (batch, prefix_len, suffix_lens): prefixes on and off page boundaries, empty and 1-token suffixes
CASES = {
    "one_token": (1, 1, [0]),
    "tiny": (3, 37, [0, 1, 5]),
    "ragged": (16, 1000, [0, 1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 7, 0, 1]),
    "long": (5, 3001, [1, 64, 0, 129, 40]),
    "batch64": (64, 4100, [(7 * i) % 81 for i in range(64)]),
}
HEADS = [(8, 8), (32, 8), (16, 2)]  # GQA ratios 1, 4, 8


class Inputs:
    """One call's arguments: a random paged cache with shuffled, distinct pages per sequence."""

    def __init__(self, batch, prefix_len, suffix_lens, heads, head_dim, page_size, dtype, device):
        gen = torch.Generator().manual_seed(batch * 7919 + prefix_len)
        num_heads, num_kv_heads = heads
        prefix_pages = -(-prefix_len // page_size)
        width = max(1, -(-max(suffix_lens) // page_size))
        num_blocks = prefix_pages + batch * width + 2
        pages = torch.randperm(num_blocks, generator=gen).to(torch.int32)
        cache = torch.randn(num_blocks, 2, page_size, num_kv_heads, head_dim, generator=gen)
        self.cache = cache.to(dtype).to(device)
        self.prefix_pages = pages[:prefix_pages].to(device)
        self.prefix_len = prefix_len
        self.suffix_pages = pages[prefix_pages : prefix_pages + batch * width].view(batch, width)
        self.suffix_pages = self.suffix_pages.to(device)
        self.suffix_lens = torch.tensor(suffix_lens, dtype=torch.int32, device=device)
        q = torch.randn(batch, num_heads, head_dim, generator=gen)
        self.q = q.to(dtype).to(device)

    def args(self) -> tuple:
        return (
            self.q,
            self.cache,
            self.prefix_pages,
            self.prefix_len,
            self.suffix_pages,
            self.suffix_lens,
        )


def make_inputs(case="tiny", heads=(8, 2), head_dim=16, page_size=16, dtype=torch.bfloat16,
                device="cpu") -> Inputs:  # fmt: skip
    batch, prefix_len, suffix_lens = CASES[case]
    return Inputs(batch, prefix_len, suffix_lens, heads, head_dim, page_size, dtype, device)


def reference(inputs: Inputs) -> torch.Tensor:
    """Plain float32 softmax attention of each sequence over its prefix + suffix tokens."""
    page_size = inputs.cache.shape[2]
    lens = inputs.suffix_lens.tolist()
    length = inputs.prefix_len + max(lens)
    pos = torch.arange(length, device=inputs.q.device)  # [length]
    prefix_slots = inputs.prefix_pages.long()[pos.clamp(max=inputs.prefix_len - 1) // page_size]
    suffix_pos = (pos - inputs.prefix_len).clamp(min=0)  # [length]
    suffix_slots = inputs.suffix_pages.long()[:, suffix_pos // page_size]  # [batch, length]
    in_prefix = pos < inputs.prefix_len
    pages = torch.where(in_prefix, prefix_slots, suffix_slots)  # [batch, length]
    slots = torch.where(in_prefix, pos, suffix_pos) % page_size  # [length]
    kv = inputs.cache[pages, :, slots].float()  # [batch, length, 2, kv_heads, head_dim]
    valid = pos[None, :] < inputs.prefix_len + inputs.suffix_lens[:, None]  # [batch, length]
    scale = inputs.q.shape[-1] ** -0.5
    out, _ = attention_with_lse(
        inputs.q.float()[:, None], kv[:, :, 0], kv[:, :, 1], scale, valid[:, None, :]
    )  # [batch, 1, num_heads, head_dim]
    return out[:, 0]


# ---- CPU: planning and input checks ----------------------------------------------------------
def test_import_does_not_load_triton():
    code = f"import sys, parrotlet_kernels.triton_shared_prefix; print({KERNELS!r} in sys.modules)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "False\n"), done.stderr


def test_plan_launch_fills_an_h100_at_batch_64_prefix_8k():
    # 256 rows per KV head -> 2 tiles of 128; 132 SMs // (2 tiles * 8 heads) -> 8 splits; from
    # 256 rows the suffixes get their own kernel
    assert plan_launch(64, 4, 8, 8192, 132) == SharedPrefixLaunch(
        128, 64, 1024, 8, 8, 3, fuse_suffix=False
    )
    assert plan_launch(63, 4, 8, 8192, 132).fuse_suffix


def test_plan_launch_small_batch_and_short_prefix():
    assert plan_launch(16, 4, 8, 1024, 132) == SharedPrefixLaunch(64, 64, 128, 8, 4, 3)
    assert plan_launch(1, 1, 8, 100, 132) == SharedPrefixLaunch(64, 64, 128, 1, 4, 3)


def test_plan_launch_rounds_chunks_to_whole_blocks():
    # 1000 / 7 -> 143 -> 192 tokens per split -> only 6 splits are needed
    assert plan_launch(2, 4, 8, 1000, 132, num_splits=7).num_splits == 6


def test_plan_launch_never_leaves_a_split_empty():
    for prefix_len in range(1, 3000, 37):
        for splits in (1, 2, 3, 5, 16, 64):
            launch = plan_launch(64, 4, 8, prefix_len, 132, num_splits=splits)
            assert launch.fits(prefix_len), (prefix_len, splits, launch)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(prefix_len=0), "prefix_len must be >= 1, got 0"),
        (dict(num_splits=0), "num_splits must be >= 1, got 0"),
    ],
)
def test_plan_launch_rejects(kwargs, message):
    args = dict(batch=4, group=4, num_kv_heads=8, prefix_len=100, num_sms=132) | kwargs
    with pytest.raises(ValueError, match=message):
        plan_launch(**args)


def test_launch_config_validation():
    with pytest.raises(ValueError, match="block_m must be a power of two >= 16, got 48"):
        SharedPrefixLaunch(48, 64, 128, 1)
    with pytest.raises(ValueError, match="num_splits must be >= 1, got 0"):
        SharedPrefixLaunch(64, 64, 128, 0)
    with pytest.raises(ValueError, match=r"partial_dtype must be a float type, got torch\.int32"):
        SharedPrefixLaunch(64, 64, 128, 1, partial_dtype=torch.int32)
    with pytest.raises(ValueError, match="warp_specialized launch has block_m 128 and unfused"):
        SharedPrefixLaunch(64, 64, 128, 1, fuse_suffix=False, warp_specialized=True)
    with pytest.raises(ValueError, match="warp_specialized launch has block_m 128 and unfused"):
        SharedPrefixLaunch(128, 64, 128, 1, warp_specialized=True)
    with pytest.raises(ValueError, match=r"consumer_order must be one of \('serial', 'overlap'"):
        SharedPrefixLaunch(128, 64, 128, 1, consumer_order="fifo")
    assert not SharedPrefixLaunch(64, 64, 128, 2).fits(128)  # second split empty
    assert not SharedPrefixLaunch(64, 64, 128, 2).fits(257)  # not covered
    assert SharedPrefixLaunch(64, 64, 128, 2).fits(129)


def _replace(inputs: Inputs, **changes) -> tuple:
    names = ["q", "cache", "prefix_pages", "prefix_len", "suffix_pages", "suffix_lens"]
    return tuple(changes.get(name, value) for name, value in zip(names, inputs.args(), strict=True))


BAD_INPUTS = [
    (lambda x: dict(q=x.q[0]), r"q must be \[batch, num_heads, head_dim\], got shape \(8, 16\)"),
    (lambda x: dict(cache=x.cache[:, 0]), r"kv_cache must be \[num_blocks, 2, page_size,"),
    (lambda x: dict(q=x.q[:, :, :8]), "q has head_dim 8, kv_cache 16"),
    (lambda x: dict(q=x.q[:, :7]), r"q's num_heads \(7\) must be a multiple of kv_cache's"),
    (lambda x: dict(q=x.q.float()), "q must be float16 or bfloat16, got torch.float32"),
    (lambda x: dict(cache=x.cache.half()), "kv_cache is torch.float16, q is torch.bfloat16"),
    (lambda x: dict(prefix_len=0), "prefix_len must be >= 1, got 0"),
    (lambda x: dict(prefix_len=49), r"prefix_pages must be 1-D with >= ceil\(49 / 16\) = 4"),
    (lambda x: dict(suffix_pages=x.suffix_pages[:2]), r"suffix_pages must be \[batch=3,"),
    (lambda x: dict(suffix_lens=x.suffix_lens[:2]), r"suffix_lens must be \[batch=3\], got \(2,\)"),
    (lambda x: dict(prefix_pages=x.prefix_pages.long()), "prefix_pages must be int32, got"),
    (lambda x: dict(suffix_lens=x.suffix_lens.long()), "suffix_lens must be int32, got"),
]


@pytest.mark.parametrize(("change", "message"), BAD_INPUTS)
def test_check_inputs_names_the_bad_argument(change, message):
    inputs = make_inputs()
    check_inputs(*inputs.args())
    with pytest.raises(ValueError, match=message):
        check_inputs(*_replace(inputs, **change(inputs)))


def test_head_dim_must_be_a_power_of_two():
    inputs = make_inputs(head_dim=48)
    with pytest.raises(ValueError, match="head_dim must be a power of two >= 16, got 48"):
        check_inputs(*inputs.args())


def test_a_warp_specialized_launch_needs_head_dim_64_or_128():
    inputs = make_inputs()  # head_dim 16
    launch = SharedPrefixLaunch(128, 64, 64, 1, fuse_suffix=False, warp_specialized=True)
    with pytest.raises(ValueError, match="needs head_dim 64 or 128, got 16"):
        shared_prefix_decode(*inputs.args(), launch=launch)


def test_cpu_tensors_are_rejected_before_triton_loads():
    sys.modules.pop(KERNELS, None)
    with pytest.raises(ValueError, match="shared_prefix_decode needs CUDA tensors, got cpu"):
        shared_prefix_decode(*make_inputs().args())
    assert KERNELS not in sys.modules


def test_reference_is_plain_attention():
    """The oracle itself, against a per-sequence loop over concatenated prefix + suffix KV."""
    inputs = make_inputs(dtype=torch.float32)
    page_size, scale = 16, 16**-0.5
    expected = []
    for b, suffix_len in enumerate(inputs.suffix_lens.tolist()):
        prefix = [(int(inputs.prefix_pages[t // page_size]), t % page_size) for t in range(37)]
        suffix = [(int(inputs.suffix_pages[b, t // page_size]), t % page_size)
                  for t in range(suffix_len)]  # fmt: skip
        kv = torch.stack([inputs.cache[page, :, slot] for page, slot in prefix + suffix])
        out, _ = attention_with_lse(inputs.q[b][None], kv[:, 0], kv[:, 1], scale)
        expected.append(out[0])
    torch.testing.assert_close(reference(inputs), torch.stack(expected))


# ---- CPU: the kernel under Triton's interpreter -------------------------------------------------
def interpreter_check() -> None:
    """The kernels with suffixes fused or in their own kernel, on CPU tensors (float16: the
    interpreter's numpy has no bfloat16)."""
    from parrotlet_kernels.triton_shared_prefix import _launch

    for case, heads in (("tiny", (8, 2)), ("ragged", (4, 4))):
        inputs = make_inputs(case, heads, head_dim=16, dtype=torch.float16)
        prefix_len = inputs.prefix_len
        chunk = -(-prefix_len // 32) * 16  # two splits of whole 16-token blocks, the last partial
        for fuse in (True, False):
            launch = SharedPrefixLaunch(16, 16, chunk, 2, fuse_suffix=fuse)
            assert launch.fits(prefix_len)
            out = _launch(*inputs.args(), scale=16**-0.5, launch=launch)
            torch.testing.assert_close(out.float(), reference(inputs), atol=2e-3, rtol=2e-3)


@requires_triton
def test_kernel_under_the_triton_interpreter():
    code = "from tests.kernels.test_triton_shared_prefix import interpreter_check; "
    run_under_triton_interpreter(code + "interpreter_check()")


# ---- GPU: the kernel against the reference ----------------------------------------------------
def gpu_check(case, heads, head_dim, page_size, dtype=torch.bfloat16, launch=None) -> None:
    inputs = make_inputs(case, heads, head_dim, page_size, dtype, device="cuda")
    actual = shared_prefix_decode(*inputs.args(), launch=launch)
    assert actual.dtype == dtype and actual.shape == inputs.q.shape
    torch.testing.assert_close(actual.float(), reference(inputs), **BF16_TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("page_size", [16, 32])
def test_kernel_matches_reference(case, heads, head_dim, page_size):
    gpu_check(case, heads, head_dim, page_size)


@pytest.mark.gpu
def test_kernel_float16():
    gpu_check("ragged", (32, 8), 128, 16, dtype=torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("splits", [1, 3, 16])
def test_kernel_any_split_count(splits):
    launch = plan_launch(64, 4, 8, 4100, 132, num_splits=splits)
    gpu_check("batch64", (32, 8), 128, 16, launch=launch)


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["tiny", "ragged", "batch64"])
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("fuse_suffix", [False, True])
@pytest.mark.parametrize("partial_dtype", [torch.float32, torch.bfloat16])
def test_kernel_suffix_placement_and_partials(case, heads, fuse_suffix, partial_dtype):
    """Suffixes inside the prefix kernel or in their own kernel; float32 or bf16 partials."""
    batch, prefix_len, _ = CASES[case]
    launch = plan_launch(batch, heads[0] // heads[1], heads[1], prefix_len, 132)
    launch = dataclasses.replace(launch, fuse_suffix=fuse_suffix, partial_dtype=partial_dtype)
    gpu_check(case, heads, 128, 16, launch=launch)


@pytest.mark.gpu
@pytest.mark.parametrize("block_m", [16, 64])
def test_kernel_row_tiles_that_split_a_group(block_m):
    """GQA group 3 (24 q / 8 kv heads): row tiles cut sequences' head groups in two."""
    batch, prefix_len, _ = CASES["ragged"]
    launch = dataclasses.replace(plan_launch(batch, 3, 8, prefix_len, 132), block_m=block_m)
    gpu_check("ragged", (24, 8), 64, 16, launch=launch)


@pytest.mark.gpu
@pytest.mark.parametrize("fuse_suffix", [False, True])
def test_kernel_replays_in_a_cuda_graph(fuse_suffix):
    launch = dataclasses.replace(plan_launch(64, 4, 8, 4100, 132), fuse_suffix=fuse_suffix)
    graph_replay_check(launch)


def graph_replay_check(launch: SharedPrefixLaunch) -> None:
    """Captured once, replayed on new queries: the output follows them."""
    inputs = make_inputs("batch64", (32, 8), 128, 16, device="cuda")
    expected = shared_prefix_decode(*inputs.args(), launch=launch)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = shared_prefix_decode(*inputs.args(), launch=launch)
    inputs.q.copy_(torch.randn_like(inputs.q))
    graph.replay()
    torch.testing.assert_close(out.float(), reference(inputs), **BF16_TOL)
    assert not torch.equal(out, expected)


def warp_specialized(batch, heads, prefix_len, stages=3, splits=None, order="pingpong"):
    """plan_launch's split of the prefix, run by the Gluon kernel (128 rows, own suffix kernel)."""
    launch = plan_launch(batch, heads[0] // heads[1], heads[1], prefix_len, 132, splits)
    return dataclasses.replace(launch, block_m=128, num_warps=4, num_stages=stages,
                               fuse_suffix=False, warp_specialized=True,
                               consumer_order=order)  # fmt: skip


def require_hopper() -> None:
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the warp-specialized kernel needs wgmma (Hopper, compute capability 9)")


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize(
    ("head_dim", "stages", "order"),
    [(128, 2, "serial"), (128, 2, "overlap"), (128, 2, "pingpong"), (128, 4, "pingpong"),
     (64, 3, "pingpong")],
)  # fmt: skip
def test_warp_specialized_kernel_matches_reference(case, heads, head_dim, stages, order):
    require_hopper()
    batch, prefix_len, _ = CASES[case]
    launch = warp_specialized(batch, heads, prefix_len, stages, order=order)
    gpu_check(case, heads, head_dim, 16, launch=launch)


@pytest.mark.gpu
@pytest.mark.parametrize("splits", [1, 3, 16])
def test_warp_specialized_kernel_pages_of_32_any_split(splits):
    require_hopper()
    launch = warp_specialized(64, (32, 8), 4100, splits=splits)
    gpu_check("batch64", (32, 8), 128, 32, launch=launch)


@pytest.mark.gpu
def test_warp_specialized_kernel_replays_in_a_cuda_graph():
    require_hopper()
    graph_replay_check(warp_specialized(64, (32, 8), 4100))
