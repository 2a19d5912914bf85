"""LLMEngine on CUDA (`-m gpu`): float32 greedy tokens equal the CPU engine's; the flashinfer
backend's tokens equal the torch reference's in the same 16-bit dtype (up to exact near-ties).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from parrotlet.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from parrotlet.engine.engine import LLMEngine, resolve_dtype
from parrotlet.engine.models.loader import load_model
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.engine.sequence import FinishReason
from parrotlet_kernels.reference import TorchReferenceBackend

from .helpers import GPU_ARCH as ARCH
from .helpers import make_prompts

pytestmark = pytest.mark.gpu

MAX_TOKENS = 24
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
NEAR_TIE = 0.02  # a divergence is allowed only where float32 logits differ by < 2% of their std


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, transformers.PreTrainedModel]:
    folder = tmp_path_factory.mktemp("llama_hd128")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**ARCH)).eval()
    model.save_pretrained(folder)
    return folder, model


def make_engine(folder: Path, device: str, dtype: str, backend: str) -> LLMEngine:
    config = EngineConfig(
        model=str(folder),
        device=device,
        dtype=dtype,
        attention_backend=backend,
        shared_prefix_min_tokens=0,
        graph_prefix_tiles=False,  # decode steps with prefix groups take flashinfer's cascade
        cache=CacheConfig(block_size=16, num_blocks=256),
        scheduler=SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=64),
    )
    model, _ = load_model(folder, dtype=resolve_dtype(config), device=torch.device(device))
    return LLMEngine(config, model, tokenizer=None)


def workload_prompts() -> list[list[int]]:
    """Six prompts sharing a 64-token prefix, then two unrelated ones."""
    prefix = make_prompts([64], seed=7)[0]
    shared = [prefix + s for s in make_prompts([5, 9, 20, 1, 33, 16], seed=8)]
    return shared + make_prompts([70, 3], seed=9)


def workload(engine: LLMEngine) -> list[list[int]]:
    """The first prompt alone (caching the prefix), then the rest as one chunked-prefill batch."""
    prompts = workload_prompts()
    first = [list(o.token_ids) for o in engine.generate(prompts[:1], GREEDY)]
    rest = [list(o.token_ids) for o in engine.generate(prompts[1:], GREEDY)]
    assert engine.stats().num_cached_prompt_tokens >= 5 * 64
    return first + rest


def assert_equal_up_to_near_ties(
    hf_model: transformers.PreTrainedModel, actual: list[list[int]], expected: list[list[int]]
) -> None:
    """Token lists agree, or first differ where the float32 model's two candidates nearly tie."""
    for prompt, a, e in zip(workload_prompts(), actual, expected, strict=True):
        if a == e:
            continue
        t = next(i for i, (x, y) in enumerate(zip(a, e, strict=True)) if x != y)
        with torch.no_grad():
            logits = hf_model(torch.tensor([prompt + e[:t]])).logits[0, -1]  # [vocab]
        gap = (logits[e[t]] - logits[a[t]]).abs().item()
        assert gap < NEAR_TIE * logits.std().item(), (
            f"prompt of {len(prompt)} tokens diverges at output {t}: {a[t]} vs {e[t]}, "
            f"float32 logit gap {gap:.4f} is not a near-tie"
        )


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_cuda_float32_matches_cpu(checkpoint, backend):
    folder, _ = checkpoint
    expected = workload(make_engine(folder, "cpu", "float32", "reference"))
    engine = make_engine(folder, "cuda", "float32", backend)
    assert isinstance(engine.runner.attention, TorchReferenceBackend)  # flashinfer has no fp32
    assert workload(engine) == expected


def test_flashinfer_rejects_float32(checkpoint):
    folder, _ = checkpoint
    with pytest.raises(ValueError, match="needs float16 or bfloat16"):
        make_engine(folder, "cuda", "float32", "flashinfer")


@pytest.mark.parametrize("cascade", ["auto", "always"])
def test_flashinfer_matches_reference_float16(checkpoint, cascade):
    from parrotlet_kernels.flashinfer_backend import FlashInferBackend
    from parrotlet_kernels.flashinfer_plan import CascadePolicy

    folder, hf_model = checkpoint
    reference = make_engine(folder, "cuda", "float16", "reference")
    assert isinstance(reference.runner.attention, TorchReferenceBackend)  # forced on CUDA
    engine = make_engine(folder, "cuda", "float16", "auto")
    assert isinstance(engine.runner.attention, FlashInferBackend)
    engine.runner.attention.cascade = CascadePolicy(cascade)
    assert_equal_up_to_near_ties(hf_model, workload(engine), workload(reference))


def test_bfloat16_flashinfer_run_completes(checkpoint):
    from parrotlet_kernels.flashinfer_backend import FlashInferBackend

    folder, _ = checkpoint
    engine = make_engine(folder, "cuda", "auto", "auto")
    assert engine.runner.attention.spec.dtype == torch.bfloat16
    assert isinstance(engine.runner.attention, FlashInferBackend)
    prompts = make_prompts([3, 17, 40, 64, 100, 9, 1, 250], seed=4)
    outputs = engine.generate(
        prompts, SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    )
    assert [len(o.token_ids) for o in outputs] == [32] * len(prompts)
    assert all(o.finish_reason is FinishReason.LENGTH for o in outputs)
    assert all(0 <= t < ARCH["vocab_size"] for o in outputs for t in o.token_ids)


def generate_with_logprobs(
    engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]
) -> list[tuple[list[int], list[float]]]:
    """Each request's output tokens and the logprobs of its tokens, collected step by step."""
    ids = [engine.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
    tokens: dict[str, list[int]] = {i: [] for i in ids}
    logprobs: dict[str, list[float]] = {i: [] for i in ids}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] = list(out.token_ids)
            logprobs[out.request_id] += [lp.logprob for lp in out.new_logprobs]
    return [(tokens[i], logprobs[i]) for i in ids]


def test_cuda_logprobs_and_penalties_match_cpu(checkpoint):
    """Under CUDA's defaults (decode CUDA graphs, async scheduling) the logprobs copied with
    the tokens and the penalties counted on the device give the CPU engine's float32 results."""
    folder, _ = checkpoint
    prompts = workload_prompts()[:4]
    asking = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=3)
    penalized = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True,
                               repetition_penalty=1.5, frequency_penalty=0.5)  # fmt: skip
    params = [asking, penalized, asking, penalized]

    expected = generate_with_logprobs(make_engine(folder, "cpu", "float32", "reference"),
                                      prompts, params)  # fmt: skip
    engine = make_engine(folder, "cuda", "float32", "auto")
    found = generate_with_logprobs(engine, prompts, params)

    assert engine.async_scheduling and engine.stats().num_graph_steps > 0
    assert [t for t, _ in found] == [t for t, _ in expected]
    for (_, got), (_, want), p in zip(found, expected, params, strict=True):
        assert len(got) == (16 if p.logprobs is not None else 0)
        assert got == pytest.approx(want, abs=1e-4)
