"""Engine postprocess, per sequence: turns each sampled token into a streamable text delta and
decides whether the sequence stopped (stop string, stop token id, EOS; none of them before
`min_tokens` tokens). max_tokens is the engine's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from parrotlet.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FinishReason = Literal["stop", "length", "abort"]

# Prompt tokens decoded as left context of the first output token (leading-space handling).
_PROMPT_CONTEXT = 5
_REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class DetokenizerStep:
    """What one token (or the end of the request) adds for the client.

    Attributes:
        delta: new text to stream; never a partial character, never part of a stop string
            (unless ``include_stop_str_in_output``).
        finished: the sequence must not be extended any more.
        stopped_by: the matched stop string, or the stop / EOS token id, else None.
        finish_reason: "stop", "length" or "abort" once finished, else None.
    """

    delta: str
    finished: bool = False
    stopped_by: str | int | None = None
    finish_reason: FinishReason | None = None


class IncrementalDetokenizer:
    """Decodes one sequence's output token by token, holding back what is not yet final.

    Text is decoded over a small window of ids (``prefix_offset:``) and only the part after
    ``read_offset`` is new, so each step costs O(window), not O(output). Text ending in U+FFFD
    (a multi-byte character split across tokens) is held until it completes; a tail that could
    still grow into a stop string is held until it cannot. ``text`` is all output text so far,
    truncated at a matched stop string; streamed deltas always concatenate to a prefix of it, and
    to all of it once finished. Stop / EOS tokens are kept in ``output_token_ids`` but add no text.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        eos_token_ids: tuple[int, ...] = (),
        skip_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        # The Rust tokenizer of a fast tokenizer decodes the same text without transformers'
        # per-call Python overhead (a third of the host time of a batch-64 decode step).
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self.params = params
        self.skip_special_tokens = skip_special_tokens
        self._stop_ids = frozenset(params.stop_token_ids)
        self._eos_ids = frozenset() if params.ignore_eos else frozenset(eos_token_ids)
        self._max_stop_len = max((len(s) for s in params.stop), default=0)
        # every proper prefix of a stop string: a tail that is one may still grow into it
        self._stop_prefixes = frozenset(s[:n] for s in params.stop for n in range(1, len(s)))
        self.output_token_ids: list[int] = []
        self.text = ""
        self._ids = list(prompt_token_ids[-_PROMPT_CONTEXT:])  # context tail + output ids
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._emitted = 0  # chars of self.text already streamed
        self.finished = False
        self.stopped_by: str | int | None = None
        self.finish_reason: FinishReason | None = None

    @property
    def reached_max_tokens(self) -> bool:
        return len(self.output_token_ids) >= self.params.max_tokens

    def step(self, new_token_id: int) -> DetokenizerStep:
        """Adds one sampled token; returns the text the client may see now."""
        if self.finished:
            raise RuntimeError(f"step() after the sequence finished ({self.finish_reason})")
        self.output_token_ids.append(new_token_id)
        may_stop = len(self.output_token_ids) > self.params.min_tokens
        if may_stop and (new_token_id in self._stop_ids or new_token_id in self._eos_ids):
            return self._end("stop", new_token_id)
        self._ids.append(new_token_id)
        old_len = len(self.text)
        self.text += self._decode_new()
        match = self._find_stop(old_len) if may_stop else None
        if match is not None:
            return self._stop_at(*match)
        return DetokenizerStep(delta=self._release(len(self.text) - self._held_back()))

    def finish(self, reason: FinishReason = "length") -> DetokenizerStep:
        """Ends the sequence for a reason other than a stop (length, abort); flushes held text.

        Idempotent: once finished, returns an empty delta with the recorded outcome.
        """
        if self.finished:
            return DetokenizerStep("", True, self.stopped_by, self.finish_reason)
        return self._end(reason, None)

    def _end(self, reason: FinishReason, stopped_by: int | None) -> DetokenizerStep:
        """Flushes a held partial character (stop strings still apply to it), then finishes."""
        old_len = len(self.text)
        self.text += self._pending_text(final=True)
        match = self._find_stop(old_len)
        if match is not None:
            return self._stop_at(*match)
        return self._finish(reason, stopped_by)

    def _finish(self, reason: FinishReason, stopped_by: str | int | None) -> DetokenizerStep:
        self.finished, self.stopped_by, self.finish_reason = True, stopped_by, reason
        return DetokenizerStep(self._release(len(self.text)), True, stopped_by, reason)

    def _decode(self, ids: list[int]) -> str:
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=self.skip_special_tokens)
        return self.tokenizer.decode(
            ids,
            skip_special_tokens=self.skip_special_tokens,
            clean_up_tokenization_spaces=False,
        )

    def _pending_text(self, final: bool) -> str:
        """Text of the ids after ``read_offset``; "" while it ends in a partial character."""
        if self._read_offset == len(self._ids):
            return ""
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) <= len(prefix) or (full.endswith(_REPLACEMENT) and not final):
            return ""
        return full[len(prefix) :]

    def _decode_new(self) -> str:
        new_text = self._pending_text(final=False)
        if new_text:
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return new_text

    def _find_stop(self, old_len: int) -> tuple[int, str] | None:
        """Earliest stop string ending in the text added since ``old_len``: (start, stop)."""
        start = max(0, old_len - self._max_stop_len + 1)
        best: tuple[int, str] | None = None
        for stop in self.params.stop:
            pos = self.text.find(stop, start)
            if pos != -1 and (best is None or pos < best[0]):
                best = (pos, stop)
        return best

    def _stop_at(self, pos: int, stop: str) -> DetokenizerStep:
        end = pos + len(stop) if self.params.include_stop_str_in_output else pos
        self.text = self.text[:end]
        return self._finish("stop", stop)

    def _held_back(self) -> int:
        """Length of the longest unreleased tail that is a proper prefix of some stop string."""
        tail = self.text[self._emitted :]
        for n in range(min(len(tail), self._max_stop_len - 1), 0, -1):
            if tail[-n:] in self._stop_prefixes:
                return n
        return 0

    def _release(self, end: int) -> str:
        delta = self.text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return delta
