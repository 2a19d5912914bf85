"""Presence, frequency and repetition penalties: the logits equal a plain reference (transformers'
RepetitionPenaltyLogitsProcessor, OpenAI's formula), and greedy outputs with a repetition
penalty equal transformers' generate, synchronous and with async scheduling."""

from __future__ import annotations

import pytest
import torch
import transformers

from parrotlet.engine.penalties import TokenCounts, apply_logit_bias
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.engine.sequence import Sequence

from .helpers import make_checkpoint, make_engine, make_prompts

VOCAB = 256


def make_seq(prompt: list[int], output: list[int], **penalties: float) -> Sequence:
    seq = Sequence("r", list(prompt), SamplingParams(**penalties), arrival=0)
    seq.token_ids.extend(output)
    return seq


def test_penalties_equal_the_reference() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, VOCAB, generator=g) * 4  # [3, V]
    prompt, output = [5, 9, 9, 200], [9, 17, 17, 17, 42]
    seqs = [
        make_seq(prompt, output, repetition_penalty=1.3),
        make_seq(prompt, output, presence_penalty=0.5, frequency_penalty=-1.25),
        make_seq(prompt, output),  # unpenalized: unchanged
    ]

    out = TokenCounts(VOCAB, torch.device("cpu")).penalize(logits, seqs)

    repetition = transformers.RepetitionPenaltyLogitsProcessor(1.3)
    expected0 = repetition(torch.tensor([prompt + output]), logits[:1].clone())[0]
    assert torch.allclose(out[0], expected0, rtol=0, atol=1e-6)
    expected1 = logits[1].clone()
    for token in set(
        output
    ):  # OpenAI: mu[j] - c[j] * alpha_frequency - [c[j] > 0] * alpha_presence
        expected1[token] -= output.count(token) * -1.25 + 0.5
    assert torch.allclose(out[1], expected1, rtol=0, atol=1e-6)
    assert torch.equal(out[2], logits[2])
    assert out[1][5] == logits[1][5]  # presence and frequency look at the output only


def test_counts_follow_sampled_and_appended_tokens_on_the_device() -> None:
    """After the first penalty the counts live on the device: a sampled token is counted by
    `record` before the host reads it, a forced one by `add`; the penalties then equal those
    of the host's whole output."""
    logits = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(2)) * 4
    seq = make_seq([5, 9], [9, 17], presence_penalty=0.5, frequency_penalty=0.75,
                   repetition_penalty=1.3)  # fmt: skip
    counts = TokenCounts(VOCAB, torch.device("cpu"))
    counts.penalize(logits, [seq])

    counts.record([seq], torch.tensor([17]))  # sampled (the host appends it later)
    counts.add(seq, [42, 42])  # forced by a guide
    seq.token_ids.extend([17, 42, 42])

    expected = TokenCounts(VOCAB, torch.device("cpu")).penalize(logits, [seq])
    assert torch.equal(counts.penalize(logits, [seq]), expected)
    assert not seq.needs_known_tokens  # penalized steps overlap under async scheduling
    counts.release(seq.request_id)
    assert torch.equal(counts.penalize(logits, [seq]), expected)  # rebuilt from the host


@pytest.mark.parametrize("penalties", [dict(presence_penalty=1.5, frequency_penalty=1.0),
                                       dict(repetition_penalty=1.6)])  # fmt: skip
def test_sampled_penalized_outputs_equal_with_async_scheduling(checkpoint, penalties) -> None:
    """Under async scheduling a step launches before the previous step's tokens are read; the
    device-side counts must already hold them, or the outputs would differ."""
    folder, _ = checkpoint
    prompts = make_prompts([6, 30, 11], seed=47)
    params = [SamplingParams(temperature=1.0, seed=s, max_tokens=24, ignore_eos=True,
                             **penalties) for s in range(3)]  # fmt: skip

    unpenalized = [SamplingParams(temperature=1.0, seed=s, max_tokens=24, ignore_eos=True)
                   for s in range(3)]  # fmt: skip

    runs = [make_engine(folder, async_scheduling=a).generate(prompts, params) for a in (0, 1)]
    plain = make_engine(folder).generate(prompts, unpenalized)

    assert [o.token_ids for o in runs[0]] == [o.token_ids for o in runs[1]]
    assert [o.token_ids for o in runs[0]] != [o.token_ids for o in plain]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama_penalties")
    return folder, make_checkpoint("llama", folder)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_greedy_with_a_repetition_penalty_equals_transformers(
    checkpoint, async_scheduling: bool
) -> None:
    folder, hf_model = checkpoint
    prompts = make_prompts([6, 30, 11], seed=41)
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True,
                            repetition_penalty=1.8)  # fmt: skip

    outs = make_engine(folder, async_scheduling=async_scheduling).generate(prompts, params)

    for prompt, out in zip(prompts, outs, strict=True):
        ids = torch.tensor([prompt])
        hf = dict(max_new_tokens=16, do_sample=False, repetition_penalty=1.8, pad_token_id=0)
        expected = hf_model.generate(ids, attention_mask=torch.ones_like(ids), **hf)
        assert list(out.token_ids) == expected[0, len(prompt) :].tolist()
    plain = make_engine(folder).generate(prompts[:1], SamplingParams(temperature=0.0,
                                         max_tokens=16, ignore_eos=True))  # fmt: skip
    assert plain[0].token_ids != outs[0].token_ids  # the penalty changed the text


def test_penalties_travel_in_sampling_params_only_when_set() -> None:
    params = SamplingParams(presence_penalty=0.5, repetition_penalty=1.2)

    wire = params.to_dict()

    assert (wire["presence_penalty"], wire["repetition_penalty"]) == (0.5, 1.2)
    assert "frequency_penalty" not in wire and SamplingParams.from_dict(wire) == params
    assert params.penalized and not SamplingParams().penalized
    assert set(SamplingParams().to_dict()) == {
        "temperature", "top_p", "top_k", "seed", "max_tokens", "stop", "stop_token_ids",
        "ignore_eos", "include_stop_str_in_output",
    }  # fmt: skip


def test_logit_bias_adds_to_the_named_tokens_of_its_row_only() -> None:
    logits = torch.randn(2, VOCAB, generator=torch.Generator().manual_seed(1))
    seqs = [make_seq([1], [], logit_bias={7: 2.5, 200: -100}), make_seq([1], [])]

    out = apply_logit_bias(logits, seqs)

    expected = logits[0].clone()
    expected[7] += 2.5
    expected[200] -= 100
    assert torch.equal(out[0], expected) and torch.equal(out[1], logits[1])


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_greedy_with_a_logit_bias_equals_transformers_sequence_bias(
    checkpoint, async_scheduling: bool
) -> None:
    folder, hf_model = checkpoint
    prompts = make_prompts([6, 30], seed=43)
    plain = make_engine(folder).generate(prompts, SamplingParams(temperature=0.0, max_tokens=8,
                                                                 ignore_eos=True))  # fmt: skip
    # push the first greedy token of each prompt far down, lift another a little
    bias = {plain[0].token_ids[0]: -100.0, plain[1].token_ids[0]: -100.0, 3: 5.0}
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True, logit_bias=bias)

    outs = make_engine(folder, async_scheduling=async_scheduling).generate(prompts, params)

    sequence_bias = {(token,): value for token, value in bias.items()}
    for prompt, out, unbiased in zip(prompts, outs, plain, strict=True):
        ids = torch.tensor([prompt])
        expected = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                     do_sample=False, pad_token_id=0,
                                     sequence_bias=sequence_bias)  # fmt: skip
        assert list(out.token_ids) == expected[0, len(prompt) :].tolist()
        assert out.token_ids[0] != unbiased.token_ids[0]


def test_logit_bias_is_checked_and_travels_in_sampling_params(checkpoint) -> None:
    params = SamplingParams(logit_bias={9: 1, 4: -2.5})

    assert params.logit_bias == ((4, -2.5), (9, 1.0))
    assert SamplingParams.from_dict(params.to_dict()) == params
    for bad, message in [
        ({-1: 1.0}, "logit_bias keys must be token ids >= 0, got -1"),
        ({3: 101}, r"logit_bias values must be in \[-100, 100\], got 101"),
        ([(3, 1.0), (3, 2.0)], r"logit_bias names token ids more than once: \[3\]"),
        (dict.fromkeys(range(301), 1.0), "logit_bias has 301 tokens, at most 300"),
    ]:
        with pytest.raises(ValueError, match=message):
            SamplingParams(logit_bias=bad)
    engine = make_engine(checkpoint[0])
    with pytest.raises(ValueError, match=r"logit_bias has token ids outside \[0, 256\): \[256\]"):
        engine.add_request([1, 2], SamplingParams(logit_bias={256: 1.0}))


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_min_tokens_equals_transformers_min_new_tokens(checkpoint, async_scheduling) -> None:
    """A stop token that greedy decoding picks early is masked until min_tokens tokens are out,
    then may end the output: transformers' min_new_tokens with that token as EOS."""
    folder, hf_model = checkpoint
    prompts = make_prompts([6, 30], seed=53)
    free = make_engine(folder).generate(prompts, SamplingParams(temperature=0.0, max_tokens=16,
                                                                ignore_eos=True))  # fmt: skip
    engine = make_engine(folder, async_scheduling=async_scheduling)

    for prompt, unbounded in zip(prompts, free, strict=True):
        stop = unbounded.token_ids[1]  # would end the output at its second token
        params = SamplingParams(temperature=0.0, max_tokens=16, stop_token_ids=[stop],
                                min_tokens=6)  # fmt: skip
        [out] = engine.generate([prompt], params)
        ids = torch.tensor([prompt])
        expected = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=16, min_new_tokens=6, eos_token_id=stop,
                                     pad_token_id=0)[0, len(prompt) :].tolist()  # fmt: skip
        assert list(out.token_ids) == expected
        assert len(out.token_ids) > 6 and stop not in out.token_ids[:6]


def test_min_tokens_is_checked() -> None:
    with pytest.raises(ValueError, match=r"min_tokens must be an int in \[0, max_tokens=4\]"):
        SamplingParams(max_tokens=4, min_tokens=5)
