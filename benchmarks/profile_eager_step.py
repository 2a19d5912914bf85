"""Whether a mixed engine step (a prefill chunk plus decoding rows) is bound by host or device,
run eagerly and as piecewise CUDA graphs around attention (engine/piecewise_graphs.py).

Builds a Llama-3-8B architecture with random bf16 weights (nothing is downloaded), keeps
`--decode-rows` sequences decoding while long prompts are prefilled `chunk` tokens a step (the
scheduler's budget: the mixed workload's steps under its latency cap look like this), and for
each chunk size and path reports the engine's step (median wall time, async scheduling on, as
served), the host time of the step's launch alone, and the device time of its kernels (torch
profiler, a separate pass). A step whose wall time is near its launch time and above its
kernels' time is host-bound: its launches, not the device, set its length. Steps longer than
the engine's `piecewise_graph_tokens` run eagerly on both paths. Writes
benchmarks/results/profile_eager_step.json (and $OUT/profile_eager_step.json when $OUT is set).

    python benchmarks/profile_eager_step.py [--chunks 64 256 1024] [--decode-rows 2]
    python benchmarks/profile_eager_step.py --device cpu --tiny   # the plumbing, host times only
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
from engine_decode import write_report  # benchmarks/ is the script's folder
from torch.profiler import ProfilerActivity, profile

from parrotlet.bench.setup import random_model
from parrotlet.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from parrotlet.engine.engine import LLMEngine
from parrotlet.engine.sampling_params import SamplingParams

VOCAB = 128256  # Llama 3's vocabulary, as the other engine benchmarks use
BULK_PROMPT = 4096  # tokens of each prompt prefilled in chunks
WARM, TIMED, PROFILED = 3, 10, 4  # steps of each phase
STEPS = WARM + TIMED + PROFILED + 4  # the rows' decode lengths and the prompts cover these


PATHS = {"eager": 0, "piecewise": EngineConfig.piecewise_graph_tokens}  # its value, the default


def make_engine(
    model, device: str, chunk: int, rows: int, bulk: int, path: str = "eager"
) -> LLMEngine:
    """An engine whose budget is `chunk` prefill tokens plus one token per decoding row, whose
    steps that are not decode-only run `path`: eager or piecewise (CUDA only)."""
    blocks = rows * 32 + bulk * BULK_PROMPT // 16 + 64
    config = EngineConfig(
        device=device,
        piecewise_graph_tokens=PATHS[path],
        dtype="bfloat16" if device != "cpu" else "float32",
        cache=CacheConfig(block_size=16, num_blocks=blocks, enable_prefix_caching=False),
        scheduler=SchedulerConfig(max_num_batched_tokens=chunk + rows, max_num_seqs=rows + bulk),
    )
    return LLMEngine(config, model, tokenizer=None)


def mixed_steps(engine: LLMEngine, chunk: int, rows: int, bulk: int) -> dict:
    """Start `rows` decoding sequences, queue `bulk` long prompts behind them, then time steps
    that each carry the rows' next tokens and `chunk` prompt tokens."""
    g = torch.Generator().manual_seed(chunk)
    vocab = engine.model_config.vocab_size
    decode = SamplingParams(temperature=0.0, max_tokens=STEPS + 64, ignore_eos=True)
    for prompt in torch.randint(1, vocab, (rows, 128), generator=g).tolist():
        engine.add_request(prompt, decode)
    while engine.scheduler.num_waiting:  # the rows' prompts (the budget may split them)
        engine.step()
    engine.step()
    once = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    for prompt in torch.randint(1, vocab, (bulk, BULK_PROMPT), generator=g).tolist():
        engine.add_request(prompt, once)
    launches = _time_launches(engine)
    for _ in range(WARM):
        engine.step()
    launches.clear()
    before = engine.stats()
    walls, computed, pieces = [], before.num_computed_tokens, before.num_piecewise_steps
    for _ in range(TIMED):
        start = time.perf_counter()
        engine.step()
        walls.append(time.perf_counter() - start)
    per_step = (engine.stats().num_computed_tokens - computed) / TIMED
    assert per_step == chunk + rows, f"steps computed {per_step} tokens, not {chunk} + {rows}"
    row = dict(
        chunk=chunk,
        decode_rows=rows,
        piecewise_steps=engine.stats().num_piecewise_steps - pieces,
        step_ms=round(statistics.median(walls) * 1e3, 3),
        launch_ms=round(statistics.median(launches) * 1e3, 3),
    )
    if engine.device.type == "cuda":
        row |= _device_time(engine)
    return row


def _time_launches(engine: LLMEngine) -> list[float]:
    """Record the host seconds of each `runner.launch` from now on (queued work, no wait)."""
    seconds: list[float] = []
    launch = engine.runner.launch

    def timed(batch):
        start = time.perf_counter()
        launched = launch(batch)
        seconds.append(time.perf_counter() - start)
        return launched

    engine.runner.launch = timed
    return seconds


def _device_time(engine: LLMEngine) -> dict:
    """The kernels' device milliseconds and count per step, over PROFILED more steps."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILED):
            engine.step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0.0)]
    device_us = sum(e.device_time_total for e in events)
    return dict(
        kernels_ms=round(device_us / PROFILED / 1e3, 3),
        kernel_launches=round(sum(e.count for e in events) / PROFILED),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--decode-rows", type=int, default=2)
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model (smoke test)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    arch = "tiny-random" if args.tiny else "llama3-8b-random"
    model = random_model(arch, VOCAB, dtype, device)
    rows = []
    for chunk, path in itertools.product(args.chunks, args.paths):
        bulk = -(-chunk * STEPS // BULK_PROMPT)  # prompts enough for every step's chunk
        engine = make_engine(model, args.device, chunk, args.decode_rows, bulk, path)
        rows.append(dict(path=path) | mixed_steps(engine, chunk, args.decode_rows, bulk))
        print(rows[-1])
        del engine
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report = dict(
        benchmark="profile_eager_step",
        model=f"{arch}, {str(dtype).removeprefix('torch.')}",
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        rows=rows,
    )
    write_report(report, "profile_eager_step")


if __name__ == "__main__":
    main()
