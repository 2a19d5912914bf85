"""CUDA graphs on the GPU (`-m gpu`): an engine replaying decode graphs produces the greedy tokens
of the same engine run eagerly (up to exact near-ties of 16-bit rounding), at bucket and
non-bucket batch sizes, with the batch shrinking through several buckets as requests finish,
for each decode attention (flashinfer, Triton, both under "auto", prefix tiles); so do the
piecewise graphs of prefill and mixed steps; every graph is captured at engine start.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from parrotlet.engine import cuda_graphs
from parrotlet.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from parrotlet.engine.engine import LLMEngine, resolve_dtype
from parrotlet.engine.models.loader import load_model
from parrotlet.engine.sampling_params import SamplingParams

from .helpers import GPU_ARCH as ARCH
from .helpers import make_prompts

pytestmark = pytest.mark.gpu

NEAR_TIE = {"float16": 0.02, "bfloat16": 0.05}  # of the float32 logits' std


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, transformers.PreTrainedModel]:
    folder = tmp_path_factory.mktemp("llama_graphs")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**ARCH)).eval()
    model.save_pretrained(folder)
    return folder, model


def make_engine(
    folder: Path,
    dtype: str,
    cuda_graphs: bool,
    async_scheduling: bool | None = None,
    budget: int = 4096,
    graph_decode_attention: str = "flashinfer",
    graph_prefix_tiles: bool = False,
    piecewise_graph_tokens: int = 512,
) -> LLMEngine:
    config = EngineConfig(
        model=str(folder),
        device="cuda",
        dtype=dtype,
        attention_backend="flashinfer",
        cuda_graphs=cuda_graphs,
        async_scheduling=async_scheduling,
        graph_decode_attention=graph_decode_attention,
        graph_prefix_tiles=graph_prefix_tiles,
        piecewise_graph_tokens=piecewise_graph_tokens,
        shared_prefix_min_tokens=0,
        cache=CacheConfig(block_size=16, num_blocks=512),
        scheduler=SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=64),
    )
    model, _ = load_model(folder, dtype=resolve_dtype(config), device=torch.device("cuda"))
    return LLMEngine(config, model, tokenizer=None)


def generate(
    engine: LLMEngine, prompts: list[list[int]], max_tokens: int | None = None
) -> list[list[int]]:
    """Greedy; by default request i stops after 4 + 3 * (i % 7) tokens, so the batch shrinks."""
    params = [
        SamplingParams(temperature=0.0, max_tokens=max_tokens or 4 + 3 * (i % 7), ignore_eos=True)
        for i in range(len(prompts))
    ]
    return [list(o.token_ids) for o in engine.generate(prompts, params)]


def assert_equal_up_to_near_ties(
    hf_model: transformers.PreTrainedModel,
    prompts: list[list[int]],
    actual: list[list[int]],
    expected: list[list[int]],
    near_tie: float,
) -> None:
    """Token lists agree, or first differ where the float32 model's two candidates nearly tie."""
    for prompt, a, e in zip(prompts, actual, expected, strict=True):
        if a == e:
            continue
        t = next(i for i, (x, y) in enumerate(zip(a, e, strict=True)) if x != y)
        with torch.no_grad():
            logits = hf_model(torch.tensor([prompt + e[:t]])).logits[0, -1]  # [vocab]
        gap = (logits[e[t]] - logits[a[t]]).abs().item()
        assert gap < near_tie * logits.std().item(), (
            f"prompt of {len(prompt)} tokens diverges at output {t}: {a[t]} vs {e[t]}, "
            f"float32 logit gap {gap:.4f} is not a near-tie"
        )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("batch", [1, 3, 8, 13, 33, 64])
def test_graph_tokens_equal_eager_tokens(checkpoint, dtype, batch):
    folder, hf_model = checkpoint
    prompts = make_prompts([3 + (17 * i) % 90 for i in range(batch)], seed=batch)
    expected = generate(make_engine(folder, dtype, cuda_graphs=False), prompts)
    engine = make_engine(folder, dtype, cuda_graphs=True)
    actual = generate(engine, prompts)
    graphs = engine.runner.graphs
    assert graphs is not None and graphs.replays["flashinfer"] > 0
    assert_equal_up_to_near_ties(hf_model, prompts, actual, expected, NEAR_TIE[dtype])


@pytest.mark.parametrize("batch", [1, 13, 64])
def test_triton_decode_graphs_equal_eager_tokens(checkpoint, batch):
    """Graphs whose attention is parrotlet's fused append + decode kernel, against eager steps."""
    folder, hf_model = checkpoint
    prompts = make_prompts([3 + (17 * i) % 90 for i in range(batch)], seed=batch)
    expected = generate(make_engine(folder, "bfloat16", cuda_graphs=False), prompts)
    engine = make_engine(folder, "bfloat16", cuda_graphs=True, graph_decode_attention="triton")
    actual = generate(engine, prompts)
    graphs = engine.runner.graphs
    assert graphs is not None and graphs.replays["triton"] == graphs.num_replays > 0
    assert_equal_up_to_near_ties(hf_model, prompts, actual, expected, NEAR_TIE["bfloat16"])


def test_auto_decode_attention_switches_kernels_with_context(checkpoint, monkeypatch):
    """Under "auto" with a limit of 320 tokens, the steps of 3 sequences take the Triton kernel
    up to it and flashinfer's past it; tokens equal eager steps throughout."""
    monkeypatch.setattr(cuda_graphs, "triton_decode_wins", lambda batch, longest: longest <= 320)
    folder, hf_model = checkpoint
    prompts = make_prompts([290, 300, 310], seed=9)
    expected = generate(make_engine(folder, "bfloat16", cuda_graphs=False), prompts, 40)
    engine = make_engine(folder, "bfloat16", cuda_graphs=True, graph_decode_attention="auto")
    actual = generate(engine, prompts, 40)
    graphs = engine.runner.graphs
    assert graphs is not None and graphs.replays["triton"] > 0 and graphs.replays["flashinfer"] > 0
    assert_equal_up_to_near_ties(hf_model, prompts, actual, expected, NEAR_TIE["bfloat16"])


@pytest.mark.parametrize("kernel", ["flashinfer", "triton"])
def test_prefix_tile_graphs_equal_eager_tokens(checkpoint, kernel):
    """Two groups sharing prefixes (and one sequence alone) decode through the prefix tiles,
    whichever kernel decodes the steps without them."""
    folder, hf_model = checkpoint
    prefixes = make_prompts([80, 40], seed=3)
    tails = make_prompts([5, 9, 20, 1, 33, 7, 12], seed=4)
    prompts = [prefixes[i % 2] + t for i, t in enumerate(tails[:6])] + tails[6:]
    eager = make_engine(folder, "bfloat16", cuda_graphs=False)
    engine = make_engine(folder, "bfloat16", True, graph_decode_attention=kernel,
                         graph_prefix_tiles=True)  # fmt: skip
    graphs = engine.runner.graphs
    assert graphs is not None
    graphs.min_tiled_bytes = 0
    # the first two prompts alone cache the prefixes; the rest then share their blocks
    expected = generate(eager, prompts[:2]) + generate(eager, prompts[2:], max_tokens=12)
    actual = generate(engine, prompts[:2]) + generate(engine, prompts[2:], max_tokens=12)
    assert 0 < graphs.num_tiled_replays < graphs.num_replays, "steps with and without tiles"
    assert_equal_up_to_near_ties(hf_model, prompts, actual, expected, NEAR_TIE["bfloat16"])


@pytest.mark.parametrize("prefix_tiles", [False, True])
def test_every_graph_is_captured_at_start(checkpoint, prefix_tiles):
    """Engine start captures each batch size's graph (and its prefix-tile twin): serving never
    waits for a capture or a Triton compile; the warm-up replays count no serving step."""
    folder, _ = checkpoint
    engine = make_engine(folder, "bfloat16", True, graph_decode_attention="auto",
                         graph_prefix_tiles=prefix_tiles)  # fmt: skip
    graphs = engine.runner.graphs
    assert graphs is not None and graphs.num_replays == 0
    variants = ("flashinfer", "triton", "tiles") if prefix_tiles else ("flashinfer", "triton")
    assert graphs.variants == variants
    assert graphs.captured == tuple((s, v) for s in reversed(graphs.sizes) for v in variants)


@pytest.mark.parametrize("cuda_graphs", [True, False])
@pytest.mark.parametrize("budget", [4096, 48])  # 48: chunked prefills mixed with decodes
def test_async_scheduling_tokens_equal_sync(checkpoint, cuda_graphs, budget):
    """Async scheduling runs the same batches with the same kernels: identical tokens."""
    folder, _ = checkpoint
    prompts = make_prompts([3 + (17 * i) % 90 for i in range(13)], seed=5)
    sync = make_engine(folder, "bfloat16", cuda_graphs, async_scheduling=False, budget=budget)
    engine = make_engine(folder, "bfloat16", cuda_graphs, budget=budget)
    assert engine.async_scheduling and not sync.async_scheduling  # on by default on CUDA
    assert generate(engine, prompts) == generate(sync, prompts)


@pytest.mark.parametrize("cascade", ["auto", "always"])
def test_cascade_steps_stay_eager(checkpoint, cascade):
    from parrotlet_kernels.flashinfer_plan import CascadePolicy

    folder, hf_model = checkpoint
    prefix = make_prompts([64], seed=7)[0]
    prompts = [prefix + s for s in make_prompts([5, 9, 20, 1, 33], seed=8)]
    eager, engine = (make_engine(folder, "float16", cuda_graphs=g) for g in (False, True))
    for e in (eager, engine):
        e.runner.attention.cascade = CascadePolicy(cascade)
    # the first prompt alone caches the prefix; the rest then share its blocks while decoding
    expected = generate(eager, prompts[:1]) + generate(eager, prompts[1:], max_tokens=12)
    actual = generate(engine, prompts[:1])
    graphs = engine.runner.graphs
    assert graphs is not None
    replays = graphs.num_replays
    actual += generate(engine, prompts[1:], max_tokens=12)  # the group never shrinks
    assert (graphs.num_replays > replays) == (cascade == "auto")  # 64 shared tokens: no cascade
    assert_equal_up_to_near_ties(hf_model, prompts, actual, expected, NEAR_TIE["float16"])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("budget", [48, 200])  # chunked prefills mixed with decodes
def test_piecewise_tokens_equal_eager_tokens(checkpoint, dtype, budget):
    """Every step replays graphs: decode steps whole, the others in pieces around attention."""
    folder, hf_model = checkpoint
    prompts = make_prompts([3 + (37 * i) % 150 for i in range(13)], seed=11)
    expected = generate(make_engine(folder, dtype, cuda_graphs=False, budget=budget), prompts)
    engine = make_engine(folder, dtype, cuda_graphs=True, budget=budget)
    actual = generate(engine, prompts)
    stats = engine.stats()
    assert stats.num_piecewise_steps > 0
    assert stats.num_piecewise_steps + stats.num_graph_steps == stats.num_steps
    assert_equal_up_to_near_ties(hf_model, prompts, actual, expected, NEAR_TIE[dtype])


def test_steps_longer_than_the_pieces_run_eagerly(checkpoint):
    folder, hf_model = checkpoint
    prompts = make_prompts([3 + (37 * i) % 150 for i in range(13)], seed=12)
    expected = generate(make_engine(folder, "bfloat16", cuda_graphs=False, budget=48), prompts)
    engine = make_engine(folder, "bfloat16", True, budget=48, piecewise_graph_tokens=32)
    actual = generate(engine, prompts)
    stats = engine.stats()
    assert 0 < stats.num_piecewise_steps < stats.num_steps - stats.num_graph_steps
    assert_equal_up_to_near_ties(hf_model, prompts, actual, expected, NEAR_TIE["bfloat16"])


def test_every_piecewise_size_is_captured_at_start(checkpoint):
    folder, _ = checkpoint
    engine = make_engine(folder, "bfloat16", True, piecewise_graph_tokens=72)
    pieces = engine.runner.pieces
    assert pieces is not None and pieces.replays == 0
    assert pieces.captured == (72, 64, 48, 32, 16)
    assert pieces.num_graphs == 5 * (engine.model_config.num_layers + 1)
    capped = make_engine(folder, "bfloat16", True, budget=40, piecewise_graph_tokens=72)
    assert capped.runner.pieces.captured == (40, 32, 16)  # no step exceeds the budget
    off = make_engine(folder, "bfloat16", True, piecewise_graph_tokens=0)
    assert off.runner.pieces is None
