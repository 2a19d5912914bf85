"""Shared-prefix decode attention: parrotlet's Triton kernel vs flashinfer vs the bytes floor.

One layer's decode attention for `batch` sequences that share a prefix of `prefix` tokens and each
own a suffix of 64 (32 q / 8 KV heads x 128, page 16, bf16), timed as CUDA-graph replays that
cycle over enough layer caches that no call finds the previous call's KV in L2 (as in a model,
where every layer reads its own cache). Compares parrotlet_kernels.triton_shared_prefix, and the
engine's graph-decode kernel with prefix tiles (triton_paged_decode + triton_prefix_tiles: each
sequence's new token appended, tables read on the device), with flashinfer's per-sequence paged
decode (tensor cores) and its 2-level cascade, and with the floor: prefix KV read once + every
suffix + q and output, over the device copy bandwidth measured in the same run. Prints a table
and one summary line; writes benchmarks/results/kernel_shared_prefix.json (and
$OUT/kernel_shared_prefix.json when $OUT is set).

    python benchmarks/kernel_shared_prefix.py [--quick] [--sweep] [--batches 64] [--prefixes 8192]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from parrotlet_kernels import triton_paged_decode
from parrotlet_kernels.interface import PrefixGroup
from parrotlet_kernels.triton_prefix_tiles import PrefixTiles, tile_prefixes, tile_shape
from parrotlet_kernels.triton_shared_prefix import (
    CONSUMER_ORDERS,
    SharedPrefixLaunch,
    plan_launch,
    shared_prefix_decode,
)

ROTATE_BYTES = 256 << 20  # KV cycled through per timed pass, several times an H100's 50 MB L2
WORKSPACE_BYTES = 128 << 20
QUICK = [(16, 1024), (64, 1024), (64, 8192), (256, 8192)]
TARGET = (64, 8192)  # the target point: >= 10x paged decode, <= 1.3x the floor


@dataclass(frozen=True)
class Shape:
    """The attention shape every grid point uses (a Llama-3-8B layer)."""

    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    page_size: int = 16
    suffix_len: int = 64
    dtype: torch.dtype = torch.bfloat16

    @property
    def token_bytes(self) -> int:
        """KV bytes of one token of one layer."""
        return 2 * self.num_kv_heads * self.head_dim * self.dtype.itemsize


@dataclass
class Problem:
    """One grid point: per-layer caches with the same page layout, queries, page tables."""

    batch: int
    prefix_len: int
    caches: list[torch.Tensor]  # [num_pages, 2, page_size, num_kv_heads, head_dim] per layer
    q: torch.Tensor  # [batch, num_heads, head_dim]
    prefix_pages: torch.Tensor  # [prefix_len / page_size] int32
    suffix_pages: torch.Tensor  # [batch, suffix_len / page_size] int32
    suffix_lens: torch.Tensor  # [batch] int32

    def floor_bytes(self, shape: Shape) -> int:
        kv_tokens = self.prefix_len + self.batch * shape.suffix_len
        return kv_tokens * shape.token_bytes + 2 * self.q.numel() * self.q.element_size()


def make_problem(shape: Shape, batch: int, prefix_len: int, device: torch.device) -> Problem:
    """Random KV and queries; prefix and suffix pages scattered over the pool like a real cache."""
    if prefix_len % shape.page_size or shape.suffix_len % shape.page_size:
        raise ValueError("prefix and suffix lengths must be whole pages (paged decode reads both)")
    prefix_pages, suffix_pages = prefix_len // shape.page_size, shape.suffix_len // shape.page_size
    num_pages = prefix_pages + batch * suffix_pages
    layer_bytes = num_pages * shape.page_size * shape.token_bytes
    num_layers = min(16, max(2, -(-ROTATE_BYTES // layer_bytes)))
    cache_shape = (num_pages, 2, shape.page_size, shape.num_kv_heads, shape.head_dim)
    perm = torch.randperm(num_pages, device=device).to(torch.int32)
    return Problem(
        batch=batch,
        prefix_len=prefix_len,
        caches=[
            torch.randn(cache_shape, device=device, dtype=shape.dtype) for _ in range(num_layers)
        ],
        q=torch.randn(batch, shape.num_heads, shape.head_dim, device=device, dtype=shape.dtype),
        prefix_pages=perm[:prefix_pages].contiguous(),
        suffix_pages=perm[prefix_pages:].view(batch, suffix_pages).contiguous(),
        suffix_lens=torch.full((batch,), shape.suffix_len, dtype=torch.int32, device=device),
    )


def triton_kernel(problem: Problem, launch=None) -> Callable[[int], torch.Tensor]:
    """parrotlet's fused shared-prefix kernel, one call per layer."""
    p = problem
    return lambda layer: shared_prefix_decode(
        p.q, p.caches[layer], p.prefix_pages, p.prefix_len, p.suffix_pages, p.suffix_lens,
        launch=launch,
    )  # fmt: skip


def prefix_tiles(
    problem: Problem, shape: Shape, block_m: int | None = None
) -> Callable[[int], torch.Tensor]:
    """The engine's Triton graph decode with one prefix group: each row's last suffix token is
    "this step's" (its cached k/v rewritten in place), the prefix read once per tile of rows
    (tile_shape's tiles, of `block_m` query rows when given)."""
    p, device, i32 = problem, problem.q.device, dict(dtype=torch.int32, device=problem.q.device)
    prefix_pages = p.prefix_pages.numel()
    pages = torch.cat([p.prefix_pages.expand(p.batch, -1), p.suffix_pages], dim=1)
    indptr = [row * pages.shape[1] for row in range(p.batch + 1)]
    sms = triton_paged_decode.num_sms(device)
    group_size = shape.num_heads // shape.num_kv_heads
    tiles = tile_shape(p.batch, group_size, shape.num_kv_heads, sms, block_m)
    group = PrefixGroup(tuple(range(p.batch)), prefix_pages)
    layout = tile_prefixes(indptr, pages.flatten().tolist(), [group], tiles)
    table = PrefixTiles(torch.tensor(layout.tile_rows, **i32).view(tiles.max_tiles, -1),
                        torch.tensor(layout.tile_pages, **i32).view(-1, 2), tiles)  # fmt: skip
    own = torch.tensor(layout.kv_indptr, **i32), torch.tensor(layout.pages, **i32)
    key_rows = p.suffix_pages[:, -1].long() * 2 * shape.page_size + shape.page_size - 1
    rows = p.caches[0].view(-1, shape.num_kv_heads, shape.head_dim)
    k, v = rows[key_rows], rows[key_rows + shape.page_size]  # layer 0's; others get them too
    last = torch.full((p.batch,), shape.page_size, **i32)
    splits = triton_paged_decode.plan_splits(p.batch, shape.num_kv_heads, sms)
    return lambda layer: triton_paged_decode.paged_decode(
        p.q, k, v, p.caches[layer], *own, last, key_rows, splits, prefix=table
    )


def paged_decode(problem: Problem, shape: Shape, workspace: torch.Tensor) -> Callable:
    """flashinfer's per-sequence paged decode (tensor cores): every sequence reads the prefix."""
    import flashinfer

    p, device = problem, problem.q.device
    per_seq = torch.cat([p.prefix_pages.expand(p.batch, -1), p.suffix_pages], dim=1)
    indptr = torch.arange(p.batch + 1, dtype=torch.int32) * per_seq.shape[1]
    last = torch.full((p.batch,), shape.page_size, dtype=torch.int32)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=True)
    wrapper.plan(
        indptr, per_seq.flatten().to(device), last, *_heads(shape),
        q_data_type=shape.dtype, kv_data_type=shape.dtype, sm_scale=shape.head_dim**-0.5,
    )  # fmt: skip
    return lambda layer: wrapper.run(p.q, p.caches[layer])


def cascade(problem: Problem, shape: Shape, workspace: torch.Tensor) -> Callable:
    """flashinfer's 2-level cascade: the prefix once for all queries, then each suffix, merged."""
    import flashinfer

    p, i32, b = problem, torch.int32, problem.batch
    wrapper = flashinfer.MultiLevelCascadeAttentionWrapper(2, workspace, "NHD")
    suffix_pages = p.suffix_pages.shape[1]
    wrapper.plan(
        [torch.tensor([0, b], dtype=i32), torch.arange(b + 1, dtype=i32)],
        [torch.tensor([0, p.prefix_pages.numel()], dtype=i32),
         torch.arange(b + 1, dtype=i32) * suffix_pages],
        [p.prefix_pages, p.suffix_pages.flatten()],
        [torch.tensor([shape.page_size], dtype=i32),
         torch.full((b,), shape.page_size, dtype=i32)],
        *_heads(shape), causal=False, sm_scale=shape.head_dim**-0.5,
        q_data_type=shape.dtype, kv_data_type=shape.dtype,
    )  # fmt: skip
    return lambda layer: wrapper.run(p.q, p.caches[layer])


def _heads(shape: Shape) -> tuple[int, int, int, int]:
    return shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.page_size


def time_us(fn: Callable[[int], torch.Tensor], num_layers: int) -> tuple[float, str]:
    """Median microseconds per call of fn(layer) over the layers, from CUDA-graph replays.

    Falls back to timing an eager loop (mode "eager") when the calls cannot be captured.
    """
    for layer in range(num_layers):  # compile / JIT, allocate
        fn(layer)
    torch.cuda.synchronize()
    calls = -(-32 // num_layers) * num_layers
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(calls):
                fn(i % num_layers)
        run, mode = graph.replay, "graph"
    except RuntimeError:
        torch.cuda.synchronize()

        def run() -> None:
            for i in range(calls):
                fn(i % num_layers)

        mode = "eager"
    run()
    times = []
    for _ in range(7):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times), mode


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a 1 GiB device-to-device copy, read + write counted, best of 5."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(4):
            dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 4e3)
    return 2 * src.numel() / best


def measure(shape: Shape, batch: int, prefix: int, bandwidth: float, workspaces) -> dict:
    """Time the three kernels at one grid point and check them against paged decode.

    A method that fails is recorded with NaN time and its error, so the others still report.
    """
    problem = make_problem(shape, batch, prefix, torch.device("cuda"))
    layers = len(problem.caches)
    builders = {
        "triton": lambda: triton_kernel(problem),
        "tiles": lambda: prefix_tiles(problem, shape),
        # tile_shape takes 128-row tiles from 256 query rows a KV head, 64 below; 128 at all:
        "tiles128": lambda: prefix_tiles(problem, shape, block_m=128),
        "paged": lambda: paged_decode(problem, shape, workspaces[0]),
        "cascade": lambda: cascade(problem, shape, workspaces[1]),
    }
    row: dict = dict(batch=batch, prefix=prefix, layers=layers)
    outs = {}
    for name, build in builders.items():
        try:
            fn = build()
            outs[name] = fn(0).float()
            row[f"{name}_us"], row[f"{name}_mode"] = time_us(fn, layers)
        except Exception as exc:
            row[f"{name}_us"], row[f"{name}_mode"] = float("nan"), f"{type(exc).__name__}: {exc}"
            print(f"{name} failed at {batch} x {prefix}: {row[f'{name}_mode']}", flush=True)
    row["floor_us"] = problem.floor_bytes(shape) / bandwidth * 1e6
    row["paged_over_triton"] = row["paged_us"] / row["triton_us"]
    row["cascade_over_triton"] = row["cascade_us"] / row["triton_us"]
    row["triton_over_floor"] = row["triton_us"] / row["floor_us"]
    row["paged_over_tiles"] = row["paged_us"] / row["tiles_us"]
    row["tiles_over_floor"] = row["tiles_us"] / row["floor_us"]
    for name in (n for n in builders if n != "paged"):
        if name in outs and "paged" in outs:
            row[f"max_err_{name}"] = (outs[name] - outs["paged"]).abs().max().item()
    return row


# (block_m, block_n, num_warps, num_stages) of the prefix kernel tried by --sweep
SWEEP_TILES = [(128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 2), (64, 64, 4, 3), (128, 128, 8, 2)]


def triton_launches(prefix: int) -> list[SharedPrefixLaunch]:
    """The Triton kernel's launches --sweep times: tiles, splits, suffix placement, partials."""
    return [
        _launch_for(prefix, splits, *tile) for tile in SWEEP_TILES for splits in (4, 8, 16)
    ] + [
        dataclasses.replace(
            _launch_for(prefix, 8, *SWEEP_TILES[0]), fuse_suffix=fuse, partial_dtype=dtype
        )
        for fuse in (False, True)
        for dtype in (torch.float32, torch.bfloat16)
    ]  # fmt: skip


def ws_launches(prefix: int) -> list[SharedPrefixLaunch]:
    """The warp-specialized (Gluon) kernel's launches: KV slots, split counts, consumer order."""
    return [
        dataclasses.replace(
            _launch_for(prefix, splits, 128, 64, 4, stages),
            fuse_suffix=False,
            warp_specialized=True,
            consumer_order=order,
        )
        for order in CONSUMER_ORDERS
        for stages in (2, 3, 4)
        for splits in (4, 8, 16)
    ]


def sweep_launches(
    shape: Shape, batch: int, prefix: int, launches: list[SharedPrefixLaunch]
) -> list[dict]:
    """The shared-prefix kernel at one point under `launches`, each output checked against
    plan_launch's (Triton) launch."""
    problem = make_problem(shape, batch, prefix, torch.device("cuda"))
    planned = triton_kernel(problem)(0).float()
    rows = []
    for launch in launches:
        try:
            fn = triton_kernel(problem, launch)
            err = (fn(0).float() - planned).abs().max().item()
            us, _ = time_us(fn, len(problem.caches))
        except Exception as exc:  # a config that does not compile is reported, not fatal
            us, err = f"{type(exc).__name__}: {str(exc)[:80]}", float("nan")
        row = {k: str(v) for k, v in dataclasses.asdict(launch).items()}
        rows.append(row | {"batch": batch, "prefix": prefix, "us": us, "max_err": err})
        print(f"sweep {batch} x {prefix}", _short(launch), us, f"max_err {err:.4f}", flush=True)
    return rows


def _short(launch: SharedPrefixLaunch) -> str:
    return " ".join(f"{k}={v}" for k, v in dataclasses.asdict(launch).items()).replace("torch.", "")


def _launch_for(prefix: int, splits: int, block_m, block_n, warps, stages) -> SharedPrefixLaunch:
    chunk = -(-(prefix // splits) // block_n) * block_n
    return SharedPrefixLaunch(block_m, block_n, chunk, -(-prefix // chunk), warps, stages)


def profile_kernels(shape: Shape, batch: int, prefix: int, workspaces) -> dict[str, float]:
    """Microseconds per call of every GPU kernel the Triton and cascade paths launch."""
    from torch.profiler import ProfilerActivity, profile

    problem = make_problem(shape, batch, prefix, torch.device("cuda"))
    fns = [triton_kernel(problem), cascade(problem, shape, workspaces[1])]
    for fn in fns:
        fn(0)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            for fn in fns:
                fn(0)
        torch.cuda.synchronize()
    kernels = {}
    for event in prof.key_averages():
        device_us = getattr(event, "device_time_total", 0.0) or 0.0
        if device_us:
            kernels[event.key[:90]] = device_us / 10
    for key, us in sorted(kernels.items(), key=lambda kv: -kv[1]):
        print(f"profile {us:9.1f} us  {key}", flush=True)
    return kernels


HEADER = (
    f"{'batch':>5} {'prefix':>6} | {'triton':>8} {'tiles':>8} {'tiles128':>8} {'paged':>8} "
    f"{'cascade':>8} "
    f"{'floor':>7} us | {'paged/tri':>9} {'casc/tri':>8} "
    f"{'tri/floor':>9} {'paged/til':>9} {'til/floor':>9} | err tri, til"
)


def format_row(r: dict) -> str:
    nan = float("nan")
    return (
        f"{r['batch']:>5} {r['prefix']:>6} | {r['triton_us']:>8.1f} {r['tiles_us']:>8.1f} "
        f"{r['tiles128_us']:>8.1f} {r['paged_us']:>8.1f} {r['cascade_us']:>8.1f} "
        f"{r['floor_us']:>7.1f}    | "
        f"{r['paged_over_triton']:>9.2f} {r['cascade_over_triton']:>8.2f} "
        f"{r['triton_over_floor']:>9.2f} {r['paged_over_tiles']:>9.2f} "
        f"{r['tiles_over_floor']:>9.2f} | {r.get('max_err_triton', nan):.3f}, "
        f"{r.get('max_err_tiles', nan):.3f}"
    )


def summary(rows: list[dict], device: str) -> str:
    target = [r for r in rows if (r["batch"], r["prefix"]) == TARGET]
    if not target:
        return f"{device}: {len(rows)} points (target point {TARGET} not measured)"
    r = target[0]
    return (
        f"{device}, batch {r['batch']} / prefix {r['prefix']}: Triton shared-prefix kernel "
        f"{r['paged_over_triton']:.1f}x faster than paged decode (target >= 10x), "
        f"{r['cascade_over_triton']:.1f}x faster than flashinfer's cascade, "
        f"{r['triton_over_floor']:.2f}x the bytes floor (target <= 1.3x); the engine's graph "
        f"kernel with prefix tiles {r['paged_over_tiles']:.1f}x paged decode, "
        f"{r['tiles_over_floor']:.2f}x the floor"
    )


def _optional(fn: Callable, default):
    """fn(), or `default` with the error printed: diagnostics must not lose the measurements."""
    try:
        return fn()
    except Exception as exc:
        print(f"skipped {getattr(fn, '__name__', fn)}: {type(exc).__name__}: {exc}", flush=True)
        return default


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only the points {QUICK}")
    parser.add_argument("--sweep", action="store_true", help=f"also sweep launches at {TARGET}")
    parser.add_argument(
        "--ws-sweep",
        action="store_true",
        help="only the warp-specialized kernel's launches, beside the planned one, at the points",
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 128, 256])
    parser.add_argument("--prefixes", type=int, nargs="+", default=[1024, 4096, 8192, 16384])
    return parser.parse_args()


def write_results(result: dict) -> None:
    """The JSON file, rewritten after every grid point so a cut-short run keeps what it measured."""
    paths = [Path(__file__).parent / "results" / "kernel_shared_prefix.json"]
    if os.environ.get("OUT"):
        paths.append(Path(os.environ["OUT"]) / "kernel_shared_prefix.json")
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")


def main() -> None:
    args = parse_args()
    shape, device = Shape(), torch.device("cuda")
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device)
    bandwidth = copy_bandwidth(device)
    print(f"{name}: copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write)", flush=True)
    points = QUICK if args.quick else [(b, p) for b in args.batches for p in args.prefixes]
    workspaces = [torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=device) for _ in "ab"]
    result: dict = dict(
        device=name, copy_bandwidth_bytes_per_s=bandwidth, summary="",
        shape={k: str(v) for k, v in dataclasses.asdict(shape).items()}, rows=[], sweep=[],
        profile_us={},
    )  # fmt: skip
    if args.ws_sweep:
        group, sms = shape.num_heads // shape.num_kv_heads, triton_paged_decode.num_sms(device)
        for b, p in points:
            planned = plan_launch(b, group, shape.num_kv_heads, p, sms)
            result["sweep"] += sweep_launches(shape, b, p, [planned, *ws_launches(p)])
            write_results(result)
        return
    print(HEADER, flush=True)
    for b, p in points:
        result["rows"].append(measure(shape, b, p, bandwidth, workspaces))
        print(format_row(result["rows"][-1]), flush=True)
        write_results(result)
    if args.sweep:
        result["profile_us"] = _optional(lambda: profile_kernels(shape, *TARGET, workspaces), {})
        launches = triton_launches(TARGET[1]) + ws_launches(TARGET[1])
        result["sweep"] = sweep_launches(shape, *TARGET, launches)
    result["summary"] = summary(result["rows"], name)
    print(result["summary"])
    write_results(result)


if __name__ == "__main__":
    main()
