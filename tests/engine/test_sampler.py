"""Tests for SamplingParams (validation, dict round trip) and the batched Sampler."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter

import pytest
import torch

from parrotlet.engine.sampler import Sampler, make_generator
from parrotlet.engine.sampling_params import SamplingParams

VOCAB = 64


def make_logits(batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, VOCAB, generator=generator) * 3  # [B, V]


def make_prob_logits(probs: list[float], rows: int) -> torch.Tensor:
    return torch.tensor([math.log(p) for p in probs]).repeat(rows, 1)  # [rows, len(probs)]


def draw_counts(probs: list[float], params: SamplingParams, n: int = 4000) -> Counter[int]:
    generator = make_generator(1234, "cpu")
    tokens = Sampler()(make_prob_logits(probs, n), [params] * n, [generator] * n)
    return Counter(tokens.tolist())


# --- SamplingParams -----------------------------------------------------------------------------


def test_params_defaults_and_greedy() -> None:
    p = SamplingParams()
    assert (p.temperature, p.top_p, p.top_k, p.seed, p.max_tokens) == (1.0, 1.0, -1, None, 16)
    assert (p.stop, p.stop_token_ids, p.ignore_eos, p.include_stop_str_in_output) == (
        (),
        (),
        False,
        False,
    )
    assert not p.greedy
    assert SamplingParams(temperature=0).greedy
    assert SamplingParams(max_tokens=0).max_tokens == 0


def test_params_normalize_stop_sequences() -> None:
    p = SamplingParams(stop="###", stop_token_ids=[7, 9])  # type: ignore[arg-type]
    assert p.stop == ("###",)
    assert p.stop_token_ids == (7, 9)
    assert SamplingParams(stop=["a", "bc"]).stop == ("a", "bc")  # type: ignore[arg-type]


def test_params_frozen() -> None:
    p = SamplingParams()
    with pytest.raises(AttributeError):
        p.temperature = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"stop": ("ok", "")}, "stop"),
        ({"stop": [3]}, "stop"),
        ({"stop": 3}, "stop"),
        ({"stop": [f"s{i}" for i in range(17)]}, "stop"),
        ({"stop": ("x" * 257,)}, "stop"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"stop_token_ids": 5}, "stop_token_ids"),
        ({"ignore_eos": 1}, "ignore_eos"),
        ({"include_stop_str_in_output": "yes"}, "include_stop_str_in_output"),
    ],
)
def test_params_validation_names_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field} "):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_stop_strings_are_bounded_for_the_shared_step_loop() -> None:
    assert len(SamplingParams(stop=[f"s{i}" for i in range(16)]).stop) == 16
    assert SamplingParams(stop="x" * 256).stop == ("x" * 256,)
    with pytest.raises(ValueError, match=r"^stop has 17 strings, at most 16$"):
        SamplingParams(stop=[f"s{i}" for i in range(17)])
    with pytest.raises(ValueError, match=r"^stop strings have at most 256 chars, got one of 257$"):
        SamplingParams(stop=("ok", "x" * 257))


def test_params_dict_round_trip() -> None:
    p = SamplingParams(temperature=0.7, top_k=5, seed=3, stop=("\n",), stop_token_ids=(2,))
    d = p.to_dict()
    assert d == {
        "temperature": 0.7,
        "top_p": 1.0,
        "top_k": 5,
        "seed": 3,
        "max_tokens": 16,
        "stop": ["\n"],
        "stop_token_ids": [2],
        "ignore_eos": False,
        "include_stop_str_in_output": False,
    }
    assert SamplingParams.from_dict(d) == p
    assert SamplingParams.from_dict({"max_tokens": 4}) == SamplingParams(max_tokens=4)


def test_params_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match=r"^unknown sampling params: best_of, n$"):
        SamplingParams.from_dict({"n": 2, "temperature": 0, "best_of": 3})
    with pytest.raises(ValueError, match="must be a dict"):
        SamplingParams.from_dict([("temperature", 0)])  # type: ignore[arg-type]


def test_params_module_does_not_import_torch() -> None:
    code = "import sys, parrotlet.engine.sampling_params; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- Sampler ------------------------------------------------------------------------------------


def test_make_generator() -> None:
    assert make_generator(None, "cpu") is None
    generator = make_generator(7, torch.device("cpu"))
    assert generator is not None
    assert generator.initial_seed() == 7


def test_greedy_equals_argmax() -> None:
    logits = make_logits(5)
    tokens = Sampler()(logits, [SamplingParams(temperature=0)] * 5, [None] * 5)
    assert tokens.dtype == torch.long
    assert tokens.tolist() == logits.argmax(dim=-1).tolist()


def test_greedy_rows_in_mixed_batch_equal_argmax() -> None:
    logits = make_logits(4)
    greedy = SamplingParams(temperature=0)
    params = [greedy, SamplingParams(), greedy, SamplingParams(top_k=3)]
    tokens = Sampler()(logits, params, [None, make_generator(1, "cpu"), None, None])
    expected = logits.argmax(dim=-1)
    assert [tokens[0].item(), tokens[2].item()] == [expected[0].item(), expected[2].item()]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(top_k=1),
        SamplingParams(top_p=1e-6),
        SamplingParams(temperature=5.0, top_k=1, top_p=0.9),
    ],
)
def test_filters_down_to_one_token_equal_greedy(params: SamplingParams) -> None:
    logits = make_logits(6, seed=3)
    generators = [make_generator(i, "cpu") for i in range(3)] + [None] * 3
    tokens = Sampler()(logits, [params] * 6, generators)
    assert tokens.tolist() == logits.argmax(dim=-1).tolist()


def test_top_k_applies_before_top_p() -> None:
    # top-k=2 renormalizes [.4, .3] to [.571, .429]; top-p=.5 then keeps only token 0.
    # (top-p first would keep tokens 0 and 1.)
    counts = draw_counts([0.4, 0.3, 0.2, 0.1], SamplingParams(top_k=2, top_p=0.5), n=500)
    assert counts == Counter({0: 500})


def test_seeded_sampling_is_reproducible() -> None:
    def run() -> list[int]:
        generator = make_generator(1234, "cpu")
        params = [SamplingParams(temperature=0.9, seed=1234)]
        return [Sampler()(make_logits(1, seed=s), params, [generator]).item() for s in range(30)]

    first = run()
    assert first == run()
    assert len(set(first)) > 1  # actually sampling, not stuck on one token


def test_seeded_row_independent_of_batch_composition() -> None:
    params = SamplingParams(temperature=0.8, top_p=0.95, seed=42)
    alone, batched = make_generator(42, "cpu"), make_generator(42, "cpu")
    others = [SamplingParams(temperature=0), SamplingParams(), SamplingParams(top_k=2)]
    for step in range(20):
        logits = make_logits(4, seed=step)  # row 2 is "our" sequence in the batch
        solo = Sampler()(logits[2:3], [params], [alone])
        batch_params = [others[0], others[1], params, others[2]]
        batch = Sampler()(logits, batch_params, [None, make_generator(step, "cpu"), batched, None])
        assert batch[2].item() == solo.item()


def test_top_k_never_samples_masked_tokens() -> None:
    counts = draw_counts([0.1, 0.4, 0.2, 0.3], SamplingParams(top_k=2))
    assert set(counts) == {1, 3}
    assert abs(counts[1] / 4000 - 4 / 7) < 0.03


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    # mass before token 2 is .8 >= .7: tokens 0 and 1 stay, renormalized to [.625, .375].
    counts = draw_counts([0.5, 0.3, 0.2], SamplingParams(top_p=0.7))
    assert set(counts) == {0, 1}
    assert abs(counts[0] / 4000 - 0.625) < 0.03


@pytest.mark.parametrize(
    ("temperature", "expected"),
    [(1.0, [0.5, 0.3, 0.2]), (0.5, [0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38])],
)
def test_temperature_distribution(temperature: float, expected: list[float]) -> None:
    counts = draw_counts([0.5, 0.3, 0.2], SamplingParams(temperature=temperature))
    for token, p in enumerate(expected):
        assert abs(counts[token] / 4000 - p) < 0.03


def test_unseeded_rows_use_global_rng() -> None:
    logits = make_prob_logits([0.5, 0.3, 0.2], 50)
    params = [SamplingParams()] * 50
    torch.manual_seed(0)
    first = Sampler()(logits, params, [None] * 50)
    torch.manual_seed(0)
    assert Sampler()(logits, params, [None] * 50).tolist() == first.tolist()


@pytest.mark.parametrize(
    ("logits", "n_params", "n_generators", "message"),
    [
        (torch.zeros(VOCAB), 1, 1, "logits must be"),
        (torch.zeros(2, VOCAB), 1, 2, "params has 1 entries for 2"),
        (torch.zeros(2, VOCAB), 2, 3, "generators has 3 entries for 2"),
    ],
)
def test_sampler_validates_batch(
    logits: torch.Tensor, n_params: int, n_generators: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Sampler()(logits, [SamplingParams()] * n_params, [None] * n_generators)
