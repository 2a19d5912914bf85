"""Decode speed on one GPU: the engine's step time vs the memory-bandwidth floor and transformers.

Builds a Llama-3-8B architecture with random bf16 weights on the GPU (nothing is downloaded), runs
B requests (random prompts, fixed output length, EOS ignored) through the parrotlet engine with
its defaults (CUDA graphs, async scheduling, the small-batch Triton linear kernel, "auto" decode
attention) and with one of them changed at a time (VARIANTS: eager, without async scheduling,
cuBLAS linear layers, Triton or flashinfer decode attention in every graph, no programmatic
dependent launch), and the same batch through `transformers` generate. The floor of a decode step
is (weight bytes + KV bytes read) / the device copy bandwidth measured in the same run. Prints
one summary line and writes benchmarks/results/engine_decode.json (and $OUT/engine_decode.json
when $OUT is set).

    python benchmarks/engine_decode.py [--batches 1 8 32 64] [--prompt-len 128] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import transformers

from parrotlet.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from parrotlet.engine.cuda_graphs import bucket_for
from parrotlet.engine.engine import LLMEngine
from parrotlet.engine.models.config import ModelConfig
from parrotlet.engine.models.llama import LlamaForCausalLM
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet_kernels.interface import AttentionMetadata

LLAMA3_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    eos_token_id=None,
    bos_token_id=None,
    pad_token_id=0,
)
TINY = dict(LLAMA3_8B, vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1)  # fmt: skip


def build_models(
    arch: dict, device: torch.device, dtype: torch.dtype
) -> tuple[transformers.PreTrainedModel, LlamaForCausalLM]:
    """transformers' model with random weights, and parrotlet's model holding a copy of them."""
    hf_config = transformers.LlamaConfig(**arch)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            hf_model = transformers.LlamaForCausalLM(hf_config).eval()
    finally:
        torch.set_default_dtype(default)
    config = ModelConfig.from_hf_config({**hf_config.to_dict(), "torch_dtype": "bfloat16"})
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(dtype)
    model.to_empty(device=device)
    with torch.no_grad():
        model.load_weights(hf_model.state_dict().items())
    return hf_model, model.eval()


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Bytes moved (read + written) per second by a device-to-device copy."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    _sync(device)
    return 2 * nbytes * repeats / (time.perf_counter() - start)


VARIANTS = {  # name: EngineConfig fields changed from the defaults
    "default": {},
    "eager": {"cuda_graphs": False},
    "sync": {"async_scheduling": False},
    "cublas": {"small_batch_linear": False},
    "triton_attention": {"graph_decode_attention": "triton"},
    "flashinfer_attention": {"graph_decode_attention": "flashinfer"},
    "no_pdl": {"programmatic_launch": False},
}


def make_engine(
    model: LlamaForCausalLM, device: str, args: argparse.Namespace, **changes
) -> LLMEngine:
    max_batch = max(args.batches)
    tokens_per_seq = args.prompt_len + args.max_tokens + 16
    config = EngineConfig(
        device=device,
        dtype="bfloat16" if device != "cpu" else "float32",
        shared_prefix_attention=False,
        **{"async_scheduling": True, **changes},
        cache=CacheConfig(
            block_size=16,
            num_blocks=max_batch * -(-tokens_per_seq // 16) + 16,
            enable_prefix_caching=False,  # the warm-up must not make the measured prefill free
        ),
        scheduler=SchedulerConfig(
            max_num_batched_tokens=max_batch * args.prompt_len, max_num_seqs=max_batch
        ),
    )
    return LLMEngine(config, model, tokenizer=None)


def run_engine(
    engine: LLMEngine, prompts: list[list[int]], max_tokens: int
) -> tuple[float, list[float]]:
    """(total seconds, decode step seconds): the first step prefills every prompt."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    for p in prompts:
        engine.add_request(p, params)
    engine.step()  # prefill of the whole batch (the budget holds it) + first token
    steps = []
    while engine.has_unfinished():
        t0 = time.perf_counter()
        engine.step()  # ends in the sampler's device->host copy: the step is complete
        steps.append(time.perf_counter() - t0)
    return time.perf_counter() - start, steps


@torch.inference_mode()
def run_transformers(hf_model, prompts: list[list[int]], max_tokens: int) -> float:
    ids = torch.tensor(prompts, device=hf_model.device)  # [batch, prompt_len]
    _sync(ids.device)
    start = time.perf_counter()
    hf_model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_tokens,
        min_new_tokens=max_tokens,
        pad_token_id=0,
    )
    _sync(ids.device)
    return time.perf_counter() - start


def floor_seconds(model: LlamaForCausalLM, batch: int, context: float, bandwidth: float) -> float:
    """One decode step reads every weight (embedding: `batch` rows) and the KV of `context`."""
    cfg = model.config
    itemsize = next(model.parameters()).element_size()
    weights = sum(p.numel() for p in model.parameters()) - model.embed_tokens.weight.numel()
    weights += batch * cfg.hidden_size
    kv = batch * context * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim
    return (weights + kv) * itemsize / bandwidth


@torch.inference_mode()
def graph_step_seconds(engine: LLMEngine, batch: int, context: int, replays: int = 20) -> float:
    """The same decode step's kernels alone: model + logits captured in a CUDA graph, replayed.

    Sequences of `context` tokens sit in the pool's first blocks (the engine is idle); this is
    what the eager engine's step would cost without any host overhead.
    """
    runner, device = engine.runner, engine.device
    attention, bs = runner.attention, runner.block_size
    pages = -(-context // bs)
    tables = torch.arange(batch * pages, dtype=torch.int32).view(batch, pages)  # [batch, pages]
    last = (tables[:, -1].long() * bs + (context - 1) % bs).to(device)  # [batch]
    metadata = AttentionMetadata(
        query_start_loc=torch.arange(batch + 1, dtype=torch.int32, device=device),
        seq_lens=torch.full((batch,), context, dtype=torch.int32, device=device),
        block_tables=tables.to(device),
        slot_mapping=last,
        query_lens_host=(1,) * batch,
        seq_lens_host=(context,) * batch,
    )
    attention.plan(metadata)
    ids = torch.randint(1, engine.model_config.vocab_size, (batch,), device=device)
    positions = torch.full((batch,), context - 1, device=device)

    def step() -> torch.Tensor:
        hidden = runner.model(ids, positions, attention, runner.kernels)
        return runner.model.compute_logits(hidden, runner.kernels)

    step()  # warm-up outside the graph (RoPE table, workspaces)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(replays):
        graph.replay()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / replays


def replay_seconds(engine: LLMEngine, batch: int, replays: int = 20) -> float | None:
    """The engine's own decode graph for `batch` replayed alone: its step minus the host work."""
    graphs = engine.runner.graphs
    if graphs is None:
        return None
    size, _ = graphs.replay_last()
    assert size == bucket_for(graphs.sizes, batch), "the last step was not the batch's graph"
    _sync(engine.device)
    start = time.perf_counter()
    for _ in range(replays):
        graphs.replay_last()
    _sync(engine.device)
    return (time.perf_counter() - start) / replays


def bench_batch(engines: dict, hf_model, model, batch: int, args, bandwidth: float) -> dict:
    """`engines`: one per VARIANTS name; "step" is the default engine's median decode step."""
    g = torch.Generator().manual_seed(batch)
    vocab = model.config.vocab_size
    prompts = torch.randint(1, vocab, (batch, args.prompt_len), generator=g).tolist()
    steps, total = {}, 0.0
    for name, engine in engines.items():
        run_engine(engine, prompts, 4)  # warm-up: JIT kernels, allocator, graph capture
        seconds, step_times = run_engine(engine, prompts, args.max_tokens)
        steps[name] = statistics.median(step_times)
        total = seconds if name == "default" else total
    replay = replay_seconds(engines["default"], batch)
    run_transformers(hf_model, prompts, 2)
    hf_seconds = run_transformers(hf_model, prompts, args.max_tokens)
    step = steps["default"]
    context = args.prompt_len + args.max_tokens // 2
    floor = floor_seconds(model, batch, context, bandwidth)
    eager = engines["eager"]
    graph = graph_step_seconds(eager, batch, context) if eager.device.type == "cuda" else step
    tokens = batch * args.max_tokens
    variants = {}
    for name, seconds in steps.items():
        ms, ratio = (
            ("step_ms", "step_over_floor")
            if name == "default"
            else (f"{name}_step_ms", f"{name}_over_floor")
        )
        variants |= {ms: round(seconds * 1e3, 3), ratio: round(seconds / floor, 3)}
    return {
        "batch": batch,
        "floor_ms": round(floor * 1e3, 3),
        "replay_ms": None if replay is None else round(replay * 1e3, 3),
        **variants,
        "graph_step_ms": round(graph * 1e3, 3),
        "graph_over_floor": round(graph / floor, 3),
        "decode_tok_s": round(batch / step, 1),
        "engine_tok_s": round(tokens / total, 1),
        "transformers_tok_s": round(tokens / hf_seconds, 1),
        "speedup_vs_transformers": round(hf_seconds / total, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model (smoke test)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    arch = TINY if args.tiny else LLAMA3_8B
    hf_model, model = build_models(arch, device, dtype)
    engines = {name: make_engine(model, args.device, args, **c) for name, c in VARIANTS.items()}
    engine = engines["default"]
    bandwidth = copy_bandwidth(device)
    rows = [bench_batch(engines, hf_model, model, b, args, bandwidth) for b in args.batches]
    report = {
        "benchmark": "engine_decode",
        "model": ("tiny Llama" if args.tiny else "Llama-3-8B architecture")
        + f", random {str(dtype).removeprefix('torch.')}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "attention": type(engine.runner.attention).__name__,
        "cuda_graphs": engine.runner.graphs is not None,
        "fused_kernels": engine.runner.kernels is not None,
        "prompt_len": args.prompt_len,
        "max_tokens": args.max_tokens,
        "copy_bandwidth_gb_s": round(bandwidth / 1e9, 1),
        "rows": rows,
    }
    write_report(report)
    by_batch = {r["batch"]: r for r in rows}
    first, big = by_batch[min(by_batch)], by_batch[max(by_batch)]
    print(
        f"engine_decode on {report['device']}: batch {first['batch']} step {first['step_ms']} ms"
        f" = {first['step_over_floor']}x the floor (without async scheduling"
        f" {first['sync_over_floor']}x, cuBLAS linear {first['cublas_over_floor']}x, Triton"
        f" decode attention {first['triton_attention_over_floor']}x, flashinfer's"
        f" {first['flashinfer_attention_over_floor']}x,"
        f" eager {first['eager_over_floor']}x, eager"
        f" kernels in one CUDA graph {first['graph_over_floor']}x); batch {big['batch']}"
        f" {big['engine_tok_s']} tok/s = {big['speedup_vs_transformers']}x transformers"
        f" ({report['attention']}, CUDA graphs {report['cuda_graphs']})"
    )


def write_report(report: dict, name: str = "engine_decode") -> None:
    """benchmarks/results/NAME.json, and $OUT/NAME.json when $OUT is set."""
    paths = [Path(__file__).parent / "results" / f"{name}.json"]
    if os.environ.get("OUT"):
        paths.append(Path(os.environ["OUT"]) / f"{name}.json")
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
