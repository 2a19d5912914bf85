"""Tests for IncrementalDetokenizer on a real byte-level BPE tokenizer trained offline."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from parrotlet.engine.detokenizer import DetokenizerStep, IncrementalDetokenizer
from parrotlet.engine.sampling_params import SamplingParams

TEXT = "héllo wörld 你好 🙂 the end."
CORPUS = [TEXT, "hello world, the quick brown fox jumps over the lazy dog.", "the end. hello again"]
EOS = "<|eos|>"


@cache
def make_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE: few merges, so multi-byte characters split across tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=290,
        special_tokens=[EOS, "<|stop|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, clean_up_tokenization_spaces=False
    )


def make_ids(text: str = TEXT) -> list[int]:
    return make_tokenizer().encode(text, add_special_tokens=False)


def make_detokenizer(
    params: SamplingParams | None = None, prompt: Sequence[int] = (), eos: bool = True
) -> IncrementalDetokenizer:
    tokenizer = make_tokenizer()
    eos_ids = (tokenizer.eos_token_id,) if eos else ()
    return IncrementalDetokenizer(tokenizer, prompt, params or SamplingParams(), eos_ids)


def stream(detok: IncrementalDetokenizer, ids: Sequence[int]) -> list[DetokenizerStep]:
    steps = []
    for token_id in ids:
        steps.append(detok.step(token_id))
        if steps[-1].finished:
            break
    return steps


def test_tokenizer_splits_multibyte_characters() -> None:
    tokenizer = make_tokenizer()
    pieces = [tokenizer.decode([i]) for i in make_ids()]
    assert sum("\ufffd" in p for p in pieces) == 13  # é, ö, 你, 好, 🙂 are split across tokens
    assert tokenizer.decode(make_ids()) == TEXT


def test_deltas_concatenate_to_decode_without_partial_characters() -> None:
    detok = make_detokenizer()
    steps = stream(detok, make_ids())
    deltas = [s.delta for s in steps]
    assert deltas == [
        "", "héllo", " w", "", "örld", " ", "", "", "你", "", "好", " ", "", "", "", "🙂",
        " the", " end", ".",
    ]  # fmt: skip
    assert "".join(deltas) == make_tokenizer().decode(make_ids()) == detok.text == TEXT
    assert not any(s.finished for s in steps)
    assert detok.output_token_ids == make_ids()
    assert detok.finish("length") == DetokenizerStep("", True, None, "length")


def test_prompt_context_does_not_change_output() -> None:
    prompt = make_ids("the quick brown fox jumps over the lazy dog. ")
    detok = make_detokenizer(prompt=prompt)
    assert "".join(s.delta for s in stream(detok, make_ids())) == TEXT


def test_decodes_a_small_window_not_the_whole_output() -> None:
    tokenizer = make_tokenizer()
    lengths: list[int] = []

    class Recording:
        def decode(self, ids: list[int], **kwargs: bool) -> str:
            lengths.append(len(ids))
            return tokenizer.decode(ids, **kwargs)

    detok = IncrementalDetokenizer(Recording(), make_ids() * 3, SamplingParams(), ())  # type: ignore[arg-type]
    assert "".join(s.delta for s in stream(detok, make_ids() * 4)) == TEXT * 4
    assert max(lengths) == 7  # 5 prompt-context ids + the 2 ids of the split "é"


def test_length_finish_flushes_partial_character_like_decode() -> None:
    ids = make_ids()[:8]  # ends inside 你, after 2 of its 3 bytes
    detok = make_detokenizer()
    deltas = [s.delta for s in stream(detok, ids)]
    final = detok.finish("length")
    assert deltas[-1] == ""
    assert final == DetokenizerStep("\ufffd", True, None, "length")
    assert "".join(deltas) + final.delta == make_tokenizer().decode(ids) == "héllo wörld \ufffd"


def test_stop_string_spanning_tokens_truncates_before_it() -> None:
    detok = make_detokenizer(SamplingParams(stop=("lo wö",)))
    steps = stream(detok, make_ids())
    # tokens: "h\xc3" "\xa9llo" " w" "\xc3" "\xb6rld": "lo" and then "lo w" are held back
    assert [s.delta for s in steps] == ["", "hél", "", "", ""]
    assert steps[-1] == DetokenizerStep("", True, "lo wö", "stop")
    assert detok.text == "hél"
    assert detok.output_token_ids == make_ids()[:5]
    with pytest.raises(RuntimeError, match="after the sequence finished"):
        detok.step(make_ids()[5])


def test_include_stop_str_in_output() -> None:
    params = SamplingParams(stop=("lo wö",), include_stop_str_in_output=True)
    detok = make_detokenizer(params)
    steps = stream(detok, make_ids())
    assert [s.delta for s in steps] == ["", "hél", "", "", "lo wö"]
    assert detok.text == "héllo wö"
    assert steps[-1].stopped_by == "lo wö"


def test_held_back_text_is_released_when_no_stop_follows() -> None:
    detok = make_detokenizer(SamplingParams(stop=("wörm",)))
    deltas = [s.delta for s in stream(detok, make_ids()[:5])]
    assert deltas == ["", "héllo", " ", "", "wörld"]  # "w" waited until "ö" completed


def test_length_finish_releases_held_back_stop_prefix() -> None:
    detok = make_detokenizer(SamplingParams(stop=("wörm",)))
    assert [s.delta for s in stream(detok, make_ids()[:3])] == ["", "héllo", " "]
    assert detok.finish("length") == DetokenizerStep("w", True, None, "length")
    assert detok.text == "héllo w"


@pytest.mark.parametrize("stop", ["wörld", "你好", "🙂 t", "end.", "d.", "o w", "é", "h"])
def test_streamed_text_never_shows_part_of_a_stop_string(stop: str) -> None:
    detok = make_detokenizer(SamplingParams(stop=(stop,)))
    expected = TEXT[: TEXT.index(stop)]
    emitted = ""
    for step in stream(detok, make_ids()):
        assert "\ufffd" not in step.delta
        emitted += step.delta
        assert expected.startswith(emitted)
    assert emitted == detok.text == expected
    assert (detok.stopped_by, detok.finish_reason) == (stop, "stop")


def test_the_longest_tail_that_may_grow_into_any_stop_string_is_held() -> None:
    detok = make_detokenizer(SamplingParams(stop=("lo x", "o wörk", "xyz")))
    deltas = [s.delta for s in stream(detok, make_ids()[:5])]
    # "lo" waits for "lo x"; then "o w" for "o wörk" (with "lo x" alone: "", "hél", "lo w", ...)
    assert deltas == ["", "hél", "l", "", "o wörld"]
    assert detok.text == "héllo wörld"


def test_earliest_stop_string_wins_within_one_step() -> None:
    detok = make_detokenizer(SamplingParams(stop=("ld", "örld")))  # both complete at "\xb6rld"
    assert "".join(s.delta for s in stream(detok, make_ids())) == "héllo w"
    assert detok.stopped_by == "örld"


def test_first_completed_stop_string_ends_generation() -> None:
    detok = make_detokenizer(SamplingParams(stop=("wörld 你好", "你")))
    assert "".join(s.delta for s in stream(detok, make_ids())) == "héllo wörld "
    assert detok.stopped_by == "你"


def test_stop_token_id_finishes_without_its_text() -> None:
    ids = make_ids()
    space = ids[5]
    assert ids.index(space) == 5
    detok = make_detokenizer(SamplingParams(stop_token_ids=(space,)))
    steps = stream(detok, ids)
    assert steps[-1] == DetokenizerStep("", True, space, "stop")
    assert detok.text == "héllo wörld"
    assert detok.output_token_ids == ids[:6]


def test_stop_token_flushes_held_back_text() -> None:
    ids = make_ids()
    detok = make_detokenizer(SamplingParams(stop=("wörm",), stop_token_ids=(ids[3],)))
    assert [s.delta for s in stream(detok, ids)] == ["", "héllo", " ", "w"]
    assert detok.stopped_by == ids[3]


def test_eos_finishes_unless_ignore_eos() -> None:
    eos = make_tokenizer().eos_token_id
    ids = [*make_ids()[:5], eos, *make_ids()[5:]]
    detok = make_detokenizer()
    steps = stream(detok, ids)
    assert steps[-1] == DetokenizerStep("", True, eos, "stop")
    assert (detok.text, detok.output_token_ids) == ("héllo wörld", ids[:6])

    ignoring = make_detokenizer(SamplingParams(ignore_eos=True))
    steps = stream(ignoring, ids)
    assert not any(s.finished for s in steps)
    assert "".join(s.delta for s in steps) == ignoring.text == TEXT  # special token skipped
    assert ignoring.output_token_ids == ids


def test_stop_token_ids_apply_even_with_ignore_eos() -> None:
    eos = make_tokenizer().eos_token_id
    detok = make_detokenizer(SamplingParams(ignore_eos=True, stop_token_ids=(eos,)))
    steps = stream(detok, [*make_ids()[:2], eos])
    assert steps[-1] == DetokenizerStep("", True, eos, "stop")


def test_eos_not_configured_does_not_stop() -> None:
    eos = make_tokenizer().eos_token_id
    detok = make_detokenizer(eos=False)
    assert not stream(detok, [*make_ids()[:2], eos])[-1].finished


def test_reached_max_tokens_and_idempotent_finish() -> None:
    detok = make_detokenizer(SamplingParams(max_tokens=2))
    detok.step(make_ids()[0])
    assert not detok.reached_max_tokens
    detok.step(make_ids()[1])
    assert detok.reached_max_tokens
    assert detok.finish("length") == DetokenizerStep("", True, None, "length")
    assert detok.finish("abort") == DetokenizerStep("", True, None, "length")
