"""Logprobs of generated tokens: equal to transformers' log-softmax at each position (the raw
model distribution, also when sampling, penalties or a guide change which token is drawn), with
the k most likely tokens in order, in a batch where other requests ask for none."""

from __future__ import annotations

import pytest
import torch

from parrotlet.engine.logprobs import TokenLogprob
from parrotlet.engine.sampling_params import SamplingParams

from .helpers import make_checkpoint, make_engine, make_prompts


@pytest.fixture(scope="module")
def oracle_and_engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama_logprobs")
    return make_checkpoint("llama", folder), make_engine(folder, async_scheduling=True)


def reference(model, prompt: list[int], output: list[int], k: int) -> list[TokenLogprob]:
    """transformers' log-softmax at each output position: the token's and the top k."""
    ids = torch.tensor([prompt + output])
    with torch.no_grad():
        logprobs = model(ids).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)  # [T, V]
    top_values, top_ids = logprobs.topk(k, dim=-1)
    return [
        TokenLogprob(token, logprobs[t, token].item(),
                     tuple(zip(top_ids[t].tolist(), top_values[t].tolist(), strict=True)))
        for t, token in enumerate(output)
    ]  # fmt: skip


def assert_close(found: list[TokenLogprob], expected: list[TokenLogprob]) -> None:
    assert [f.token_id for f in found] == [e.token_id for e in expected]
    for f, e in zip(found, expected, strict=True):
        assert [i for i, _ in f.top] == [i for i, _ in e.top]
        values = [f.logprob, *(p for _, p in f.top)]
        assert values == pytest.approx([e.logprob, *(p for _, p in e.top)], abs=1e-4)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0, max_tokens=6, logprobs=5),
        SamplingParams(temperature=1.3, top_k=40, seed=3, max_tokens=6, logprobs=2),
        SamplingParams(temperature=0, max_tokens=6, logprobs=0, repetition_penalty=1.8),
    ],
    ids=["greedy", "sampled", "penalized"],
)
def test_each_generated_token_has_the_models_own_logprobs(oracle_and_engine, params) -> None:
    model, engine = oracle_and_engine
    prompt, other = make_prompts([9, 5])
    asking = engine.add_request(prompt, params)
    engine.add_request(other, SamplingParams(max_tokens=4))
    found: dict[str, list[TokenLogprob]] = {}
    tokens: dict[str, tuple[int, ...]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            found.setdefault(out.request_id, []).extend(out.new_logprobs)
            tokens[out.request_id] = out.token_ids

    output = list(tokens.pop(asking))
    assert len(output) == 6
    assert_close(found.pop(asking), reference(model, prompt, output, params.logprobs))
    assert list(found.values()) == [[]]  # the other request asked for none


def test_logprobs_travel_in_sampling_params_and_are_checked() -> None:
    params = SamplingParams(logprobs=0)

    assert SamplingParams.from_dict(params.to_dict()) == params
    assert params.to_dict()["logprobs"] == 0
    for bad in (-1, 21, 2.0, True):
        with pytest.raises(ValueError, match=r"logprobs must be None or an int in \[0, 20\]"):
            SamplingParams(logprobs=bad)
