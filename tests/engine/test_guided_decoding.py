"""Guided decoding (structured outputs): the logits mask equals llguidance's own per-token
answer, and a random-weight model's outputs always match their guide, synchronous or with async
scheduling (which must then read each guided step's tokens before the next launch)."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import pytest
import torch
import transformers

from parrotlet.engine.async_engine import AsyncEngine
from parrotlet.engine.config import EngineConfig
from parrotlet.engine.engine import LLMEngine
from parrotlet.engine.guide import Guide
from parrotlet.engine.guided_decoding import GuideCompiler, advance, mask_logits
from parrotlet.engine.models.loader import load_model
from parrotlet.engine.sampling_params import SamplingParams

from .helpers import GPU_ARCH, TINY, make_engine

VOCAB = 49152  # the default model's tokenizer
NUMBER = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
          "additionalProperties": False}  # fmt: skip
GUIDES = [
    Guide.json(NUMBER),
    Guide("regex", r"[a-z]{3}-[0-9]{2}"),
    Guide("grammar", 'start: "yes" | "no" | "maybe so"'),
]


@pytest.fixture(scope="module")
def tokenizer() -> transformers.PreTrainedTokenizerBase:
    """The default model's tokenizer ($PARROTLET_TEST_TOKENIZER on the GPU image, which has no
    default model)."""
    folder = os.environ.get("PARROTLET_TEST_TOKENIZER")
    if folder is None:
        from parrotlet.engine.models.default_model import default_model_path

        folder = str(default_model_path())
    return transformers.AutoTokenizer.from_pretrained(folder)


def save_llama(folder: Path, arch: dict) -> Path:
    """A random-weight Llama over the default tokenizer's vocabulary."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{**arch, "vocab_size": VOCAB})
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_llama(tmp_path_factory.mktemp("llama_guided"), TINY)


def matches(guide: Guide, text: str) -> bool:
    if guide.kind == "json_schema":
        value = json.loads(text)
        return set(value) == {"n"} and type(value["n"]) is int
    if guide.kind == "regex":
        return re.fullmatch(guide.spec, text) is not None
    return text in ("yes", "no", "maybe so")


def test_the_mask_keeps_exactly_the_tokens_the_matcher_allows(tokenizer) -> None:
    compiler = GuideCompiler(tokenizer, (tokenizer.eos_token_id,), VOCAB)
    matcher = compiler.matcher(Guide("regex", "(yes|no)!"))
    logits = torch.randn(2, VOCAB, generator=torch.Generator().manual_seed(3))

    out = mask_logits(logits, [matcher, None])

    bias = torch.frombuffer(bytearray(matcher.compute_logit_bias()), dtype=torch.uint8)
    allowed = bias[:VOCAB] > 0  # llguidance's byte-a-token answer, not the bitmask
    assert torch.equal(out[0].isfinite(), allowed)
    assert torch.equal(out[0][allowed], logits[0][allowed])
    assert torch.equal(out[1], logits[1])
    yes, no = tokenizer.encode("yes")[0], tokenizer.encode("no")[0]
    assert allowed[yes] and allowed[no] and not allowed[tokenizer.eos_token_id]
    assert not advance(matcher, yes)
    assert advance(matcher, tokenizer.encode("!")[0])  # "yes!" is complete


def test_a_bad_guide_is_refused_and_the_engine_goes_on(folder, tokenizer) -> None:
    engine = make_engine(folder, tokenizer=tokenizer)

    with pytest.raises(ValueError, match=r"(?s)the regex guide does not compile: .*unclosed group"):
        engine.add_request([1, 2, 3], SamplingParams(guide=Guide("regex", "(ab")))

    [out] = engine.generate([[1, 2, 3]], SamplingParams(max_tokens=3, guide=GUIDES[2]))
    assert out.text in ("yes", "no", "maybe so")


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_random_weights_write_only_what_the_guide_allows(
    folder, tokenizer, async_scheduling: bool
) -> None:
    engine = make_engine(folder, tokenizer=tokenizer, async_scheduling=async_scheduling)
    prompts = [[5, 6, 7], [9] * 20, [11, 12]]
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=40, guide=g)
              for s, g in enumerate(GUIDES)]  # fmt: skip
    free = SamplingParams(temperature=1.0, seed=7, max_tokens=8, ignore_eos=True)

    outs = engine.generate([*prompts, [4, 4]], [*params, free])

    for guide, out in zip(GUIDES, outs, strict=False):
        assert out.finish_reason == "stop" and matches(guide, out.text), (guide, out.text)
    assert len(outs[3].token_ids) == 8  # an unguided request beside them is unaffected
    assert all(c == 0 for c in engine.blocks.ref_counts)


def test_async_scheduling_gives_the_same_guided_tokens(folder, tokenizer) -> None:
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=30, guide=g)
              for s, g in enumerate(GUIDES)]  # fmt: skip
    prompts = [[5, 6, 7], [9] * 20, [11, 12]]

    runs = [make_engine(folder, tokenizer=tokenizer, async_scheduling=a).generate(prompts, params)
            for a in (False, True)]  # fmt: skip

    assert [o.token_ids for o in runs[0]] == [o.token_ids for o in runs[1]]


@pytest.mark.gpu
def test_guided_decoding_on_cuda_with_graphs_and_async_scheduling(tmp_path, tokenizer) -> None:
    """On CUDA (decode CUDA graphs, async scheduling by default) guided outputs match their
    guides and equal the synchronous engine's tokens."""
    folder = save_llama(tmp_path, GPU_ARCH)  # head_dim 128 for flashinfer
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=30, guide=g)
              for s, g in enumerate(GUIDES)]  # fmt: skip
    prompts = [[5, 6, 7], [9] * 20, [11, 12]]

    runs = []
    for async_scheduling in (False, True):
        config = EngineConfig(model=str(folder), device="cuda", async_scheduling=async_scheduling)
        model, _ = load_model(folder, dtype=torch.float32, device=torch.device("cuda"))
        runs.append(LLMEngine(config, model, tokenizer=tokenizer).generate(prompts, params))

    for guide, out in zip(GUIDES, runs[1], strict=True):
        assert out.finish_reason == "stop" and matches(guide, out.text), (guide, out.text)
    assert [o.token_ids for o in runs[0]] == [o.token_ids for o in runs[1]]


def test_jump_forward_appends_forced_tokens_without_sampling_them(folder, tokenizer) -> None:
    """A JSON object of fixed keys: the keys and punctuation are forced, so with jump-forward
    the engine samples only the values (fewer steps than tokens), and the output still matches;
    without it every token is a step."""
    schema = {"type": "object", "properties": {"alpha": {"type": "integer"}, "beta":
              {"type": "boolean"}}, "required": ["alpha", "beta"]}  # fmt: skip
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=40, guide=Guide.json(schema))

    steps, outs = [], []
    for jump in (True, False):
        engine = make_engine(folder, tokenizer=tokenizer, guided_jump_forward=jump)
        [out] = engine.generate([[5, 6, 7]], params)
        steps.append(engine.stats().num_steps)
        outs.append(out)

    for out in outs:
        value = json.loads(out.text)
        assert list(value) == ["alpha", "beta"] and type(value["alpha"]) is int
        assert type(value["beta"]) is bool and out.finish_reason == "stop"
    assert steps[0] < len(outs[0].token_ids) and steps[1] == len(outs[1].token_ids)
    assert outs[0].text.startswith('{"alpha": ')  # forced: '{"alpha": ' then a sampled digit


def test_a_guided_request_with_logprobs_samples_every_token(folder, tokenizer) -> None:
    """Jump-forward would append forced tokens without logprobs: with logprobs each token is
    sampled (the mask leaves the forced one) and has its own, the raw model's."""
    schema = {"type": "object", "properties": {"alpha": {"type": "boolean"}},
              "required": ["alpha"]}  # fmt: skip
    params = SamplingParams(temperature=0, max_tokens=20, guide=Guide.json(schema), logprobs=1)
    engine = make_engine(folder, tokenizer=tokenizer)
    engine.add_request([5, 6, 7], params)

    outs = []
    while engine.has_unfinished():
        outs += engine.step()

    assert [len(o.new_token_ids) for o in outs] == [1] * len(outs)
    assert [o.new_logprobs[0].token_id for o in outs] == list(outs[-1].token_ids)
    assert engine.stats().num_steps == len(outs[-1].token_ids)
    assert json.loads(outs[-1].text).keys() == {"alpha"}
    first = outs[0].new_logprobs[0]  # the raw model's: the guide's token is not its top one
    assert tokenizer.decode([first.token_id]) == '{"' and first.top[0][0] != first.token_id


def test_jump_forward_stops_at_max_tokens(folder, tokenizer) -> None:
    guide = Guide("grammar", 'start: "The answer is " NUM "."\nNUM: /[0-9]+/')
    [out] = make_engine(folder, tokenizer=tokenizer).generate(
        [[5, 6]], SamplingParams(temperature=0.0, max_tokens=2, guide=guide)
    )

    assert len(out.token_ids) == 2 and out.finish_reason == "length"
    assert out.text == tokenizer.decode(out.token_ids)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_preempted_guided_sequences_resume_their_guide(
    folder, tokenizer, async_scheduling: bool
) -> None:
    """Preemption recomputes a sequence's generated tokens (forced ones too); its matcher keeps
    its state, so greedy guided outputs equal those of an engine with room for all."""
    prompts = [[5 + i] * 30 for i in range(6)]
    params = SamplingParams(temperature=0.0, max_tokens=24, guide=GUIDES[0])

    roomy = make_engine(folder, tokenizer=tokenizer).generate(prompts, params)
    tight = make_engine(folder, tokenizer=tokenizer, num_blocks=24, block_size=4,
                               async_scheduling=async_scheduling)  # fmt: skip
    outs = tight.generate(prompts, params)

    assert tight.stats().num_preemptions > 0
    assert [(o.token_ids, o.finish_reason) for o in outs] == [
        (o.token_ids, o.finish_reason) for o in roomy
    ]


@pytest.mark.anyio
async def test_the_guide_tokenizer_is_built_off_the_event_loop(folder, tokenizer) -> None:
    """Building llguidance's tokenizer takes ~0.4 s: the first guided request has AsyncEngine
    build it in a worker thread, not on the loop that serves every session."""
    engine = make_engine(folder, tokenizer=tokenizer)
    threads: list[threading.Thread] = []
    prepare = engine.guides.prepare

    def recording() -> None:
        threads.append(threading.current_thread())
        prepare()

    engine.guides.prepare = recording  # type: ignore[method-assign]
    async_engine = AsyncEngine(engine)
    out = await async_engine.complete([5, 6], SamplingParams(max_tokens=4, guide=GUIDES[2]))
    await async_engine.close()

    assert threads[0] is not threading.current_thread()  # the build, in a worker thread
    assert threads[1:] == [threading.current_thread()]  # the matcher's check: built already
    assert out.text in ("yes", "no", "maybe so")
