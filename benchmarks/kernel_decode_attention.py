"""Decode attention of one layer with RoPE and the K/V append: Triton's fused kernel vs flashinfer.

For Llama-3-8B's heads (32 q / 8 KV, head dim 128, bf16, page 16), batch 1-64 and contexts of
160-16384 tokens, times what a CUDA-graph decode step does per layer after the qkv projection:
flashinfer (its in-place RoPE, two index_copy_ cache writes, then the tensor-core paged decode
with its split merge, as the model + GraphDecodeAttention run it) and
`triton_paged_decode.paged_decode` with a Rope (rotate, write and attend in one launch, a merge
where it splits), as the engine launches it (64 cached tokens a loop step, `plan_launch`'s warps
and KV loop), then at one page (16) a step, with each of the three launches `plan_launch` picks
from (4 warps, 8 warps, the pipelined loop), and with 2x and 4x the KV splits `plan_splits`
gives. Each is a CUDA graph over 32 layers, whose caches are distinct
up to 4 GiB in all (then reused in turn: each far larger than the L2); the floor is the KV bytes
over the copy bandwidth measured in the same run. Checks the Triton output against flashinfer's
first. Prints a line per point and a summary; writes
benchmarks/results/kernel_decode_attention.json (and $OUT/kernel_decode_attention.json when
$OUT is set).

    python benchmarks/kernel_decode_attention.py [--batches 1 8 32 64]
        [--contexts 160 1024 4096 16384]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from engine_decode import copy_bandwidth, write_report
from kernel_linear import time_us as graph_time_us

from parrotlet_kernels.interface import Rope
from parrotlet_kernels.triton_paged_decode import (
    MAX_SPLITS,
    DecodeLaunch,
    num_sms,
    paged_decode,
    plan_launch,
    plan_splits,
)
from parrotlet_kernels.triton_prefix_tiles import BLOCK_N

HEADS, KV_HEADS, HEAD_DIM, PAGE, LAYERS = 32, 8, 128, 16, 32
CACHE_BYTES = 4 << 30  # distinct caches up to this size in all
LAUNCHES = {  # plan_launch's choices (it returns one of these), each timed at every point
    "4warps": DecodeLaunch(),
    "8warps": DecodeLaunch(num_warps=8),
    "pipelined": DecodeLaunch(pipelined=True),
}


class Problem:
    """Caches for `LAYERS` layers holding `batch` sequences of `context` tokens (this step's
    included); layer i reads cache i % len(caches)."""

    def __init__(self, batch: int, context: int) -> None:
        dev, bf16 = torch.device("cuda"), torch.bfloat16
        pages = -(-context // PAGE)
        cache_bytes = batch * pages * 2 * PAGE * KV_HEADS * HEAD_DIM * 2
        self.caches = [
            torch.randn(batch * pages, 2, PAGE, KV_HEADS, HEAD_DIM, device=dev, dtype=bf16)
            for _ in range(max(2, min(LAYERS, CACHE_BYTES // cache_bytes)))
        ]
        self.indptr = torch.arange(batch + 1, dtype=torch.int32, device=dev) * pages
        self.indices = torch.randperm(batch * pages, device=dev).to(torch.int32)
        last = context - (pages - 1) * PAGE
        self.last = torch.full((batch,), last, dtype=torch.int32, device=dev)
        last_pages = self.indices[self.indptr[1:].long() - 1].long()
        self.key_rows = last_pages * 2 * PAGE + last - 1
        self.q = torch.randn(batch, HEADS, HEAD_DIM, device=dev, dtype=bf16)  # unrotated
        self.k = torch.randn(batch, KV_HEADS, HEAD_DIM, device=dev, dtype=bf16)
        self.v = torch.randn_like(self.k)
        positions = torch.full((batch,), context - 1, dtype=torch.int32, device=dev)
        inv_freq = 500000.0 ** -(torch.arange(0, HEAD_DIM, 2, device=dev) / HEAD_DIM)
        freqs = torch.outer(torch.arange(context, device=dev, dtype=torch.float32), inv_freq)
        self.rope = Rope(positions, torch.cat((freqs.cos(), freqs.sin()), dim=-1))
        self.batch, self.context = batch, context

    def kv_bytes(self) -> int:
        return self.batch * self.context * KV_HEADS * HEAD_DIM * 2 * 2

    def rows(self, layer: int) -> torch.Tensor:
        return self.cache(layer).view(-1, KV_HEADS, HEAD_DIM)

    def cache(self, layer: int) -> torch.Tensor:
        return self.caches[layer % len(self.caches)]


def flashinfer_layer(problem: Problem, workspace: torch.Tensor) -> Callable[[int], torch.Tensor]:
    import flashinfer

    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
        workspace, "NHD", use_cuda_graph=True, use_tensor_cores=True,
        paged_kv_indptr_buffer=problem.indptr.clone(),
        paged_kv_indices_buffer=problem.indices.clone(),
        paged_kv_last_page_len_buffer=problem.last.clone(),
    )  # fmt: skip
    wrapper.plan(
        problem.indptr.cpu(), problem.indices, problem.last.cpu(), HEADS, KV_HEADS, HEAD_DIM,
        PAGE, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16,
    )  # fmt: skip

    q, k, rope = problem.q.clone(), problem.k.clone(), problem.rope  # rotated in place

    def layer(i: int) -> torch.Tensor:
        flashinfer.apply_rope_with_cos_sin_cache_inplace(rope.positions, q, k, HEAD_DIM,
                                                         rope.cos_sin)  # fmt: skip
        rows = problem.rows(i)
        rows.index_copy_(0, problem.key_rows, k)
        rows.index_copy_(0, problem.key_rows + PAGE, problem.v)
        return wrapper.run(q, problem.cache(i))

    return layer


def triton_layer(
    problem: Problem,
    num_splits: int,
    block_n: int = BLOCK_N,
    launch: DecodeLaunch | None = None,
) -> Callable[[int], torch.Tensor]:
    def layer(i: int) -> torch.Tensor:
        return paged_decode(
            problem.q, problem.k, problem.v, problem.cache(i), problem.indptr,
            problem.indices, problem.last, problem.key_rows, num_splits, rope=problem.rope,
            block_n=block_n, launch=launch,
        )  # fmt: skip

    return layer


def time_us(layer: Callable[[int], torch.Tensor]) -> float:
    """Microseconds per layer from replays of one CUDA graph over every layer."""
    return graph_time_us(layer, LAYERS, reps=5)


def measure(batch: int, context: int, bandwidth: float, workspace: torch.Tensor) -> dict:
    problem = Problem(batch, context)
    sms = num_sms(torch.device("cuda"))
    splits = plan_splits(batch, KV_HEADS, sms)
    ours, theirs = triton_layer(problem, splits), flashinfer_layer(problem, workspace)
    error = (ours(0).float() - theirs(0).float()).abs().max().item()  # theirs' first rotation
    launch_us = {name: time_us(triton_layer(problem, splits, launch=launch))
                 for name, launch in LAUNCHES.items()}  # fmt: skip
    planned = plan_launch(batch * KV_HEADS * splits, sms)
    row = {
        "batch": batch, "context": context, "num_splits": splits, "max_abs_err": error,
        "floor_us": problem.kv_bytes() / bandwidth * 1e6, "flashinfer_us": time_us(theirs),
        # the engine's launch, timed once among LAUNCHES
        "triton_us": next(launch_us[n] for n, launch in LAUNCHES.items() if launch == planned),
        "triton_page_us": time_us(triton_layer(problem, splits, block_n=PAGE)),
        **{f"triton_{name}_us": us for name, us in launch_us.items()},
    }  # fmt: skip
    for factor in (2, 4):  # more KV splits than plan_splits gives: a sweep for its rule
        more = min(MAX_SPLITS, splits * factor)
        row[f"triton_x{factor}_splits"] = more
        row[f"triton_x{factor}_us"] = time_us(triton_layer(problem, more))
    row["speedup"] = row["flashinfer_us"] / row["triton_us"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--contexts", type=int, nargs="+", default=[160, 1024, 4096, 16384])
    args = parser.parse_args()
    bandwidth = copy_bandwidth(torch.device("cuda"))
    workspace = torch.zeros(256 << 20, dtype=torch.uint8, device="cuda")
    rows = []
    for batch in args.batches:
        for context in args.contexts:
            r = measure(batch, context, bandwidth, workspace)
            rows.append(r)
            print(
                f"batch {batch:3d} context {context:5d}: flashinfer {r['flashinfer_us']:7.2f} us"
                f"  triton {r['triton_us']:7.2f} us ({r['num_splits']} splits; a page a loop"
                f" step {r['triton_page_us']:7.2f}; 4 warps {r['triton_4warps_us']:7.2f},"
                f" 8 warps {r['triton_8warps_us']:7.2f}, pipelined"
                f" {r['triton_pipelined_us']:7.2f};"
                f" {r['triton_x2_splits']} splits"
                f" {r['triton_x2_us']:7.2f}, {r['triton_x4_splits']} {r['triton_x4_us']:7.2f})"
                f"  floor {r['floor_us']:7.2f}  {r['speedup']:.2f}x  err {r['max_abs_err']:.3g}",
                flush=True,
            )
            torch.cuda.empty_cache()
    wins = sum(r["speedup"] > 1 for r in rows)
    first = rows[0]
    print(
        f"kernel_decode_attention on {torch.cuda.get_device_name()}: Triton faster at {wins} of"
        f" {len(rows)} points; batch {first['batch']} / {first['context']} tokens"
        f" {first['triton_us']:.2f} vs {first['flashinfer_us']:.2f} us a layer"
    )
    write_report(
        {"device": torch.cuda.get_device_name(), "copy_bandwidth_gb_s": bandwidth / 1e9,
         "rows": rows}, "kernel_decode_attention",
    )  # fmt: skip


if __name__ == "__main__":
    main()
