"""Per-call sampling parameters: set by the app (Call), carried over HTTP, read by the engine's
sampler and detokenizer. Must not import torch: the app-facing API imports this module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from parrotlet.engine.guide import Guide
from parrotlet.engine.logprobs import MAX_LOGPROBS

_MAX_SEED = 2**64
# Every generated token is checked against the stop strings on the engine's step loop, which all
# sessions share: a request may not make that check arbitrarily long (OpenAI allows 4 strings).
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
# Fields added after the wire format settled: left out of to_dict() at their defaults (in
# their wire form).
_OMITTED_AT_DEFAULT = {"guide": None, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                       "repetition_penalty": 1.0, "logprobs": None, "logit_bias": [],
                       "min_tokens": 0}  # fmt: skip
MAX_LOGIT_BIAS = 300  # tokens a request may bias (OpenAI's limit)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingParams:
    """How one call samples its output tokens and when it stops.

    Invariants (checked in ``__post_init__``, ValueError naming the field otherwise):
    ``temperature >= 0`` (0 means greedy), ``0 < top_p <= 1``, ``top_k >= -1`` (-1 or 0 turn
    top-k off), ``max_tokens >= 0`` (0: prefill only, e.g. to pin a prefix in the KV cache),
    ``0 <= seed < 2**64``, at most 16 stop strings of 1 to 256 chars, stop token ids ``>= 0``.
    ``stop`` and ``stop_token_ids`` are always tuples (a str or list is normalized); ``guide``
    is a Guide (its dict form is converted); presence and frequency penalties in [-2, 2], a
    repetition penalty > 0 (1: off); ``0 <= min_tokens <= max_tokens``; ``logprobs`` None or
    in [0, 20]; ``logit_bias`` at most
    300 (token id >= 0, bias in [-100, 100]) pairs, sorted by token id (a dict is converted).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    guide: Guide | None = None  # structured output: what the text must match
    presence_penalty: float = 0.0  # OpenAI's: minus this for a token already in the output
    frequency_penalty: float = 0.0  # OpenAI's: minus this times its count in the output
    repetition_penalty: float = 1.0  # vLLM / transformers: a seen token's logit / this (> 0)
    # each generated token's log-probability and this many most likely tokens' (logprobs.py);
    # None: none. Guided tokens are then all sampled (no jump-forward), so each has its own.
    logprobs: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()  # OpenAI's: added to these tokens' logits
    min_tokens: int = 0  # vLLM's: no EOS, stop token id or stop string ends fewer tokens

    def __post_init__(self) -> None:
        if self.guide is not None:
            object.__setattr__(self, "guide", Guide.of(self.guide))  # from_dict's form too
        self._normalize_sequences()
        self._validate_numbers()
        self._validate_penalties()
        self._normalize_logit_bias()
        self._validate_stops()
        for name in ("ignore_eos", "include_stop_str_in_output"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def _normalize_sequences(self) -> None:
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (list, tuple)):
            raise ValueError(f"stop must be a str or a list of str, got {self.stop!r}")
        if not isinstance(self.stop_token_ids, (list, tuple)):
            raise ValueError(f"stop_token_ids must be a list of int, got {self.stop_token_ids!r}")
        object.__setattr__(self, "stop", tuple(stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

    def _validate_penalties(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not -2 <= value <= 2:
                raise ValueError(f"{name} must be in [-2, 2], got {value!r}")
        p = self.repetition_penalty
        if not _is_number(p) or not math.isfinite(p) or p <= 0:
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {p!r}")

    def _normalize_logit_bias(self) -> None:
        bias = self.logit_bias
        pairs = list(bias.items()) if isinstance(bias, dict) else bias
        if not isinstance(pairs, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs
        ):
            raise ValueError(f"logit_bias must map token ids to biases, got {bias!r}")
        if len(pairs) > MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias has {len(pairs)} tokens, at most {MAX_LOGIT_BIAS}")
        for token, value in pairs:
            if not _is_int(token) or token < 0:
                raise ValueError(f"logit_bias keys must be token ids >= 0, got {token!r}")
            if not _is_number(value) or not -100 <= value <= 100:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {value!r}")
        normalized = tuple(sorted((token, float(value)) for token, value in pairs))
        tokens = [token for token, _ in normalized]
        repeated = sorted({t for t in tokens if tokens.count(t) > 1})
        if repeated:
            raise ValueError(f"logit_bias names token ids more than once: {repeated}")
        object.__setattr__(self, "logit_bias", normalized)

    def _validate_numbers(self) -> None:
        t = self.temperature
        if not _is_number(t) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {t!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or self.top_k < -1:
            raise ValueError(f"top_k must be an int >= -1 (-1 or 0: off), got {self.top_k!r}")
        if not _is_int(self.max_tokens) or self.max_tokens < 0:
            raise ValueError(f"max_tokens must be an int >= 0, got {self.max_tokens!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < _MAX_SEED):
            raise ValueError(f"seed must be None or an int in [0, 2**64), got {self.seed!r}")
        if not _is_int(self.min_tokens) or not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"min_tokens must be an int in [0, max_tokens={self.max_tokens}], "
                             f"got {self.min_tokens!r}")  # fmt: skip
        k = self.logprobs
        if k is not None and (not _is_int(k) or not 0 <= k <= MAX_LOGPROBS):
            raise ValueError(f"logprobs must be None or an int in [0, {MAX_LOGPROBS}], got {k!r}")

    def _validate_stops(self) -> None:
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"stop has {len(self.stop)} strings, at most {MAX_STOP_STRINGS}")
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop must contain non-empty strings, got {s!r}")
            if len(s) > MAX_STOP_CHARS:
                raise ValueError(
                    f"stop strings have at most {MAX_STOP_CHARS} chars, got one of {len(s)}"
                )
        for t in self.stop_token_ids:
            if not _is_int(t) or t < 0:
                raise ValueError(f"stop_token_ids must contain ints >= 0, got {t!r}")

    @property
    def greedy(self) -> bool:
        """True when the sampler takes the argmax (temperature 0)."""
        return self.temperature == 0

    @property
    def penalized(self) -> bool:
        """True when a presence, frequency or repetition penalty changes the logits."""
        return bool(self.presence_penalty or self.frequency_penalty) or (
            self.repetition_penalty != 1
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); ``from_dict(p.to_dict()) == p``."""
        d = asdict(self)
        d["stop"] = list(self.stop)
        d["stop_token_ids"] = list(self.stop_token_ids)
        d["logit_bias"] = [list(pair) for pair in self.logit_bias]
        for name, default in _OMITTED_AT_DEFAULT.items():
            if d[name] == default:
                del d[name]  # the wire form of a call that does not use them is unchanged
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplingParams:
        """Build from a (possibly partial) dict; unknown keys raise ValueError naming them."""
        if not isinstance(d, dict):
            raise ValueError(f"sampling params must be a dict, got {type(d).__name__}")
        unknown = sorted(str(k) for k in set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown sampling params: {', '.join(unknown)}")
        return cls(**d)
