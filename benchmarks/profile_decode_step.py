"""Where a decode step's GPU time goes: per-kernel device time of the engine's CUDA-graph step.

Builds a Llama-3-8B architecture with random bf16 weights (nothing is downloaded), runs a decode
batch through the engine, then profiles replays of its last step's CUDA graph and prints,
per kernel family, the device microseconds per step next to the replay's wall time and the
bytes floor (weights + KV over the copy bandwidth measured in the same run), once per graph
decode attention (flashinfer, and parrotlet's Triton kernel with RoPE and the K/V append fused).
With programmatic dependent launch (the engine's default on sm_90+) a Triton kernel starts
during the one before it and counts its wait as device time, so the kernels' sum exceeds the
replay there: compare replay times, and read per-kernel times as upper bounds.
Writes benchmarks/results/profile_decode_step.json (and $OUT/profile_decode_step.json when $OUT
is set).

    python benchmarks/profile_decode_step.py [--batches 1 64] [--context 160] [--attention ...]
        [--shared-prefix TOKENS]   # prompts share their first TOKENS; --attention tiles
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections import defaultdict

import torch
from engine_decode import write_report  # benchmarks/ is the script's folder
from kernel_shared_prefix import copy_bandwidth
from torch.profiler import ProfilerActivity, profile

from parrotlet.bench.setup import random_model
from parrotlet.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from parrotlet.engine.cuda_graphs import bucket_for
from parrotlet.engine.engine import LLMEngine
from parrotlet.engine.sampling_params import SamplingParams

VOCAB = 128256  # Llama 3's vocabulary, as benchmarks/engine_decode.py uses
FAMILIES = [  # (family, regex over the kernel name), first match wins
    ("gemm", r"gemm|gemv|cutlass|sm90_xmma|nvjet|splitK|small_batch_linear"),
    (
        "attention",
        r"flashinfer.*(Prefill|Decode|Merge|Partition|VariableLength)|PersistentKernel"
        r"|paged_decode_kernel|prefix_tiles_kernel|merge_kernel",
    ),
    ("rmsnorm", r"RMSNorm|rmsnorm"),
    ("rope", r"Rope|rope|Rotary"),
    ("silu_mul", r"act_and_mul|silu"),
    ("kv_write", r"index_copy|indexing_backward|index_put|scatter"),
    ("copy", r"copy|Copy|elementwise_kernel|vectorized"),
    ("sampling", r"argmax|reduce|Reduce"),
]


def family(name: str) -> str:
    for fam, pattern in FAMILIES:
        if re.search(pattern, name):
            return fam
    return "other"


def make_engine(model, batch: int, context: int, attention: str, shared: int) -> LLMEngine:
    """`attention`: flashinfer or triton (graph_decode_attention), or tiles (flashinfer with
    prefix tiles, which read a `shared`-token prefix once per tile)."""
    blocks = batch * -(-(context + 64) // 16) + 16
    config = EngineConfig(
        device="cuda",
        dtype="bfloat16",
        graph_decode_attention="flashinfer" if attention == "tiles" else attention,
        graph_prefix_tiles=attention == "tiles",
        shared_prefix_attention=attention == "tiles",
        cache=CacheConfig(block_size=16, num_blocks=blocks, enable_prefix_caching=shared > 0),
        scheduler=SchedulerConfig(max_num_batched_tokens=batch * context, max_num_seqs=batch),
    )
    return LLMEngine(config, model, tokenizer=None)


def decode_batch(engine: LLMEngine, batch: int, context: int, shared: int) -> int:
    """Run a batch to `context` tokens; the graph batch size of its decode steps.

    The prompts begin with the same `shared` tokens, cached by a first request beforehand, so
    the batch shares their KV blocks."""
    g = torch.Generator().manual_seed(batch)
    prefix = torch.randint(1, VOCAB, (shared,), generator=g).tolist()
    prompts = torch.randint(1, VOCAB, (batch, context - 8 - shared), generator=g).tolist()
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    if shared:
        _finish(engine, [prefix + [1]], SamplingParams(temperature=0.0, max_tokens=1))
    _finish(engine, [prefix + p for p in prompts], params)
    graphs = engine.runner.graphs
    assert graphs is not None, "CUDA graphs are off: is flashinfer installed?"
    return bucket_for(graphs.sizes, batch)


def _finish(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams) -> None:
    for p in prompts:
        engine.add_request(p, params)
    while engine.has_unfinished():
        engine.step()


def replay_ms(engine: LLMEngine, replays: int = 30) -> float:
    graphs = engine.runner.graphs
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graphs.replay_last()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_table(engine: LLMEngine, replays: int = 10) -> dict[str, dict]:
    """Per kernel name: calls and device microseconds per step."""
    graphs = engine.runner.graphs
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graphs.replay_last()
        torch.cuda.synchronize()
    table: dict[str, dict] = {}
    for event in prof.key_averages():
        device_us = getattr(event, "device_time_total", 0.0) or 0.0
        if device_us and event.count:
            table[event.key] = dict(calls=event.count / replays, us=device_us / replays)
    return table


def floor_ms(model, batch: int, context: int, shared: int, bandwidth: float) -> float:
    """Weights + KV bytes (a shared prefix read once) over the bandwidth."""
    cfg = model.config
    weights = sum(p.numel() for p in model.parameters()) - model.embed_tokens.weight.numel()
    tokens = shared + batch * (context - shared)
    kv = tokens * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim
    return (weights + kv + batch * cfg.hidden_size) * 2 / bandwidth * 1e3


def profile_batch(
    model, batch: int, context: int, shared: int, bandwidth: float, attention: str
) -> dict:
    engine = make_engine(model, batch, context, attention, shared)
    size = decode_batch(engine, batch, context, shared)
    last = engine.runner.graphs.replay_last()
    assert last == (size, attention), f"the batch's last step ran graph {last}"
    wall = replay_ms(engine)
    table = kernel_table(engine)
    families: dict[str, float] = defaultdict(float)
    for name, row in table.items():
        families[family(name)] += row["us"]
    kernels_ms = sum(r["us"] for r in table.values()) / 1e3
    result = dict(
        batch=batch,
        context=context,
        shared_prefix=shared,
        attention=attention,
        replay_ms=round(wall, 3),
        kernels_ms=round(kernels_ms, 3),
        floor_ms=round(floor_ms(model, batch, context, shared, bandwidth), 3),
        launches=round(sum(r["calls"] for r in table.values())),
        families_us={k: round(v, 1) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
        kernels=[
            dict(name=name[:120], calls=r["calls"], us=round(r["us"], 1))
            for name, r in sorted(table.items(), key=lambda kv: -kv[1]["us"])
        ],
    )
    del engine
    torch.cuda.empty_cache()
    return result


def print_result(r: dict) -> None:
    print(
        f"batch {r['batch']}, context {r['context']} ({r['shared_prefix']} shared), "
        f"{r['attention']} attention: replay {r['replay_ms']} ms, "
        f"kernels {r['kernels_ms']} ms, floor {r['floor_ms']} ms, {r['launches']} launches/step"
    )
    for fam, us in r["families_us"].items():
        print(f"  {fam:<10} {us:9.1f} us")
    for k in r["kernels"][:14]:
        print(f"    {k['us']:8.1f} us {k['calls']:6.1f}x  {k['name'][:90]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--context", type=int, default=160)
    parser.add_argument("--shared-prefix", type=int, default=0,
                        help="tokens all prompts begin with (KV blocks shared)")  # fmt: skip
    parser.add_argument("--attention", nargs="+", default=["flashinfer", "triton"],
                        choices=["flashinfer", "triton", "tiles"],
                        help="graph_decode_attention values to profile; tiles: flashinfer "
                        "with prefix tiles over the shared prefix")  # fmt: skip
    args = parser.parse_args()
    model = random_model("llama3-8b-random", VOCAB, torch.bfloat16, torch.device("cuda"))
    bandwidth = copy_bandwidth(torch.device("cuda"))
    report = dict(
        benchmark="profile_decode_step",
        device=torch.cuda.get_device_name(),
        copy_bandwidth_gb_s=round(bandwidth / 1e9, 1),
        rows=[
            profile_batch(model, b, args.context, args.shared_prefix, bandwidth, attention)
            for b in args.batches
            for attention in args.attention
        ],
    )
    for row in report["rows"]:
        print_result(row)
    write_report(report, "profile_decode_step")


if __name__ == "__main__":
    main()
