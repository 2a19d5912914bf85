"""The fused append + paged decode kernel: input checks and split planning on CPU; its output and
its cache writes against plain torch attention under Triton's interpreter (float16; skipped
without triton) and on the GPU (`-m gpu`).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from parrotlet_kernels.attention_math import attention_with_lse
from parrotlet_kernels.interface import Rope
from parrotlet_kernels.triton_paged_decode import (
    DecodeLaunch,
    check_inputs,
    paged_decode,
    plan_launch,
    plan_splits,
    triton_decode_wins,
)

from .attention_helpers import requires_triton, run_under_triton_interpreter

KERNELS = "parrotlet_kernels.triton_paged_decode_kernels"


class Step:
    """One decode step: a random paged cache, shuffled distinct pages, this step's q/k/v."""

    def __init__(self, seq_lens, heads=(8, 2), head_dim=16, page_size=16, dtype=torch.float16,
                 device="cpu") -> None:  # fmt: skip
        gen = torch.Generator().manual_seed(sum(seq_lens))
        num_heads, num_kv_heads = heads
        pages = [-(-n // page_size) for n in seq_lens]
        num_blocks = sum(pages) + 3
        order = torch.randperm(num_blocks, generator=gen).to(torch.int32)
        shape = (num_blocks, 2, page_size, num_kv_heads, head_dim)
        self.cache = torch.randn(shape, generator=gen).to(dtype).to(device)
        self.indptr = torch.tensor([0, *torch.tensor(pages).cumsum(0).tolist()], dtype=torch.int32)
        self.indices = order[: sum(pages)]
        last = [n - (p - 1) * page_size for n, p in zip(seq_lens, pages, strict=True)]
        self.last = torch.tensor(last, dtype=torch.int32)
        last_pages = self.indices[self.indptr[1:].long() - 1].long()
        self.key_rows = last_pages * 2 * page_size + self.last.long() - 1
        batch = len(seq_lens)
        self.q = torch.randn(batch, num_heads, head_dim, generator=gen).to(dtype).to(device)
        qkv = torch.randn(batch, 3, num_kv_heads, head_dim, generator=gen).to(dtype).to(device)
        self.k, self.v = qkv[:, 1], qkv[:, 2]  # strided views, as the model's split gives
        self.indptr, self.indices = self.indptr.to(device), self.indices.to(device)
        self.last, self.key_rows = self.last.to(device), self.key_rows.to(device)
        self.seq_lens, self.page_size = seq_lens, page_size

    def args(self, num_splits: int) -> tuple:
        return (self.q, self.k, self.v, self.cache, self.indptr, self.indices, self.last,
                self.key_rows, num_splits)  # fmt: skip

    def reference(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the cache with this step's k/v written, float32 attention of each sequence)."""
        cache = self.cache.clone()
        rows = cache.view(-1, *cache.shape[3:])
        rows[self.key_rows] = self.k
        rows[self.key_rows + self.page_size] = self.v
        outs = []
        for b, n in enumerate(self.seq_lens):
            pages = self.indices[self.indptr[b] : self.indptr[b + 1]].long()
            kv = cache[pages].transpose(1, 2).flatten(0, 1)[:n].float()  # [n, 2, kv_heads, dim]
            scale = self.q.shape[-1] ** -0.5
            out, _ = attention_with_lse(self.q[b][None].float(), kv[:, 0], kv[:, 1], scale)
            outs.append(out[0])
        return cache, torch.stack(outs)


CASES = [  # (sequence lengths, heads, num_splits)
    ([1], (8, 2), 1),  # only this step's token
    ([1, 17, 16, 33], (8, 2), 3),  # splits left empty, page boundaries
    ([100, 5, 64], (8, 8), 4),  # GQA 1
    ([300, 129], (16, 2), 16),  # GQA 8, more splits than pages for one sequence
    ([47], (4, 4), 1),
]


def cos_sin_cache(max_positions: int, head_dim: int, device: str) -> torch.Tensor:
    """flashinfer's layout: `[max_positions, head_dim]` float32, cos then sin of each frequency."""
    inv_freq = 10000.0 ** -(torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).to(device)


def rotate(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate-half RoPE of `[batch, heads, head_dim]` in float32, rounded to x's dtype."""
    half = x.shape[-1] // 2
    cos_sin = rope.cos_sin[rope.positions.long()][:, None]  # [batch, 1, head_dim]
    cos, sin = cos_sin[..., :half], cos_sin[..., half:]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def with_rope(step: Step) -> tuple[Step, Rope]:
    """The step's q and k as unrotated inputs, and the Rope at each sequence's position;
    `step.q` / `step.k` become the rotated ones the reference attends."""
    device = step.q.device
    positions = torch.tensor([n - 1 for n in step.seq_lens], dtype=torch.int32, device=device)
    rope = Rope(positions, cos_sin_cache(max(step.seq_lens), step.q.shape[-1], device))
    raw = (step.q, step.k)
    step.q, step.k = rotate(step.q, rope), rotate(step.k, rope)
    return raw, rope


def check_kernel(
    device: str, dtype: torch.dtype, head_dim: int = 16, programmatic: bool = False
) -> None:
    """Every case, a page (16 tokens) and four pages a loop step, and four pages in the pipelined
    loop; odd cases with RoPE; on a GPU four pages a step with 8 warps too (the interpreter has
    no warps); `programmatic`: launched with PDL (on a GPU that has it)."""
    loops = [(16, DecodeLaunch()), (64, DecodeLaunch()), (64, DecodeLaunch(pipelined=True))]
    loops += [(64, DecodeLaunch(num_warps=8))] if device == "cuda" else []
    runs = [(case, rope, *loop) for case, rope in zip(CASES, [False, True] * 3, strict=False)
            for loop in loops]  # fmt: skip
    for (seq_lens, heads, splits), use_rope, block_n, launch in runs:
        step = Step(seq_lens, heads, head_dim, dtype=dtype, device=device)
        args, rope = list(step.args(splits)), None
        if use_rope:
            (args[0], args[1]), rope = with_rope(step)
        cache, expected = step.reference()
        out = paged_decode(
            *args, rope=rope, block_n=block_n, launch=launch, programmatic=programmatic
        )
        assert out.shape == step.q.shape and out.dtype == dtype
        torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)
        assert_same_cache(step, cache, rotated=rope is not None)


def assert_same_cache(step: Step, expected: torch.Tensor, rotated: bool) -> None:
    """Only this step's k/v are written, exactly (rotated keys: up to one rounding step)."""
    if rotated:  # the kernel may fuse the rotation's multiply-adds, torch rounds each
        rows, expected_rows = (c.view(-1, *c.shape[3:]) for c in (step.cache, expected))
        keys = step.key_rows
        torch.testing.assert_close(rows[keys].float(), expected_rows[keys].float(), atol=1e-2,
                                   rtol=1e-2)  # fmt: skip
        rows[keys] = expected_rows[keys]
    assert torch.equal(step.cache, expected)


# ---- CPU: planning and input checks ----------------------------------------------------------
def test_plan_launch_uses_8_warps_up_to_an_sm_each_and_pipelines_past_two():
    """The H100's grids (132 SMs, 8 KV heads, plan_splits' splits): batch 1, 8, 32, 64; then
    the thresholds."""
    assert [b * 8 * plan_splits(b, 8, 132) for b in (1, 8, 32, 64)] == [128, 256, 256, 512]
    eight, four, pipelined = DecodeLaunch(8), DecodeLaunch(), DecodeLaunch(pipelined=True)
    programs = (128, 256, 512, 132, 133, 264, 265)
    launches = [eight, four, pipelined, eight, four, four, pipelined]
    assert [plan_launch(p, 132) for p in programs] == launches


def test_plan_splits_gives_every_sm_two_programs_up_to_16_splits():
    assert [plan_splits(b, 8, 132) for b in (1, 2, 4, 8, 16, 32, 64)] == [16, 16, 8, 4, 2, 1, 1]
    assert plan_splits(1, 1, 4) == 8


def test_triton_decode_wins_up_to_16k_tokens_and_8k_from_batch_64():
    wins = [(b, n) for b in (1, 32, 64, 128) for n in (8192, 8193, 16384, 16385)
            if triton_decode_wins(b, n)]  # fmt: skip
    assert wins == [(1, 8192), (1, 8193), (1, 16384), (32, 8192), (32, 8193), (32, 16384),
                    (64, 8192), (128, 8192)]  # fmt: skip


BAD = [
    (lambda s: dict(q=s.q[0]), r"q must be \[batch, num_heads, head_dim\]"),
    (lambda s: dict(q=s.q.float()), "q and kv_cache must share float16 / bfloat16"),
    (lambda s: dict(k=s.k[:1]), r"k must be \[4, 2, 16\]"),
    (lambda s: dict(v=s.v.bfloat16()), r"v must be \[4, 2, 16\] torch.float16"),
    (lambda s: dict(q=s.q[:, :7]), r"num_heads \(7\) must be a multiple of num_kv_heads \(2\)"),
    (lambda s: dict(indptr=s.indptr.long()), "kv_indptr must be torch.int32 of shape"),
    (lambda s: dict(last=s.last[:2]), r"last_page_len must be torch.int32 of shape \(4,\)"),
    (lambda s: dict(key_rows=s.key_rows.int()), "key_rows must be torch.int64"),
    (lambda s: dict(num_splits=17), r"num_splits must be in \[1, 16\], got 17"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_check_inputs_names_the_bad_argument(change, message):
    step = Step([1, 17, 16, 33])
    names = ["q", "k", "v", "cache", "indptr", "indices", "last", "key_rows", "num_splits"]
    args = dict(zip(names, step.args(2), strict=True))
    check_inputs(*args.values())
    with pytest.raises(ValueError, match=message):
        check_inputs(*(args | change(step)).values())


def test_rope_inputs_are_checked():
    step = Step([1, 17, 16, 33])
    cos_sin = cos_sin_cache(40, 16, "cpu")
    bad = [
        (Rope(torch.zeros(3, dtype=torch.int32), cos_sin), r"rope.positions must be .* \(4,\)"),
        (Rope(torch.zeros(4), cos_sin), "rope.positions must be int32 / int64"),
        (Rope(torch.zeros(4, dtype=torch.long), cos_sin[:, :8]), r"\[max_positions, 16\]"),
        (Rope(torch.zeros(4, dtype=torch.long), cos_sin.double()), "rope.cos_sin must be float32"),
    ]
    for rope, message in bad:
        with pytest.raises(ValueError, match=message):
            paged_decode(*step.args(2), rope=rope)


def test_block_n_is_a_power_of_two_of_whole_pages_and_warps_4_or_8():
    step = Step([1, 17, 16, 33])  # page 16
    for block_n in (8, 48):
        with pytest.raises(ValueError, match=f"power of two >= the page size 16, got {block_n}"):
            paged_decode(*step.args(2), block_n=block_n)
    with pytest.raises(ValueError, match="num_warps must be 4 or 8, got 2"):
        DecodeLaunch(num_warps=2)


def test_reference_reads_the_sequence_in_order():
    """The oracle itself: a sequence over two shuffled pages reads them in page-table order."""
    step = Step([20], heads=(2, 2))
    cache, expected = step.reference()
    pages = step.indices.tolist()
    tokens = [cache[pages[t // 16], :, t % 16] for t in range(20)]  # [2, kv_heads, dim] each
    kv = torch.stack(tokens).float()
    out, _ = attention_with_lse(step.q.float(), kv[:, 0], kv[:, 1], 16**-0.5)
    torch.testing.assert_close(expected, out)


def test_import_does_not_load_triton():
    code = f"import sys, parrotlet_kernels.triton_paged_decode; print({KERNELS!r} in sys.modules)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "False\n"), done.stderr


# ---- the kernel: Triton's interpreter on CPU, then the GPU -------------------------------------
@requires_triton
def test_kernel_under_the_triton_interpreter():
    """float16 only: the interpreter mishandles bfloat16 loads (seen with triton 3.6)."""
    code = "from tests.kernels.test_triton_paged_decode import check_kernel; import torch; "
    code += "check_kernel('cpu', torch.float16)"
    run_under_triton_interpreter(code)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("programmatic", [False, True])
def test_kernel_on_gpu(dtype: torch.dtype, head_dim: int, programmatic: bool) -> None:
    check_kernel("cuda", dtype, head_dim, programmatic)
