"""Guided decoding (structured outputs) in the engine step: each guided sequence has an
llguidance matcher, compiled from its Guide when the request is added; before sampling, the
runner masks every token its matcher does not allow, and after the step the engine feeds the
sampled token to the matcher, appends the tokens the guide then forces (jump-forward), and stops
the sequence once its text is complete.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from parrotlet.engine.guide import Guide

if TYPE_CHECKING:  # imported on the first guided request (the GPU image may lack it)
    import llguidance


class GuideCompiler:
    """Compiles Guides into matchers over one engine's tokenizer (built on first use, ~0.4 s
    for a 49K vocabulary) and vocabulary of `vocab_size` logits columns."""

    def __init__(self, tokenizer: object, eos_ids: Sequence[int], vocab_size: int) -> None:
        self._hf_tokenizer, self._eos_ids, self.vocab_size = tokenizer, list(eos_ids), vocab_size
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        """Whether the tokenizer is built (matchers then compile in about a millisecond)."""
        return self._tokenizer is not None

    def prepare(self) -> None:
        """Build the tokenizer (thread-safe; AsyncEngine runs it off the event loop)."""
        if self._hf_tokenizer is None:
            raise ValueError("guided decoding needs the engine's tokenizer")
        import llguidance.hf

        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf_tokenizer, n_vocab=self.vocab_size, eos_token=self._eos_ids or None
                )  # no EOS ids (a model config without one): the tokenizer's

    def matcher(self, guide: Guide) -> llguidance.LLMatcher:
        """A fresh matcher for `guide`; ValueError (naming the guide) if it does not compile."""
        import llguidance

        self.prepare()
        matcher = llguidance.LLMatcher(self._tokenizer, guide.grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(f"the {guide.kind} guide does not compile: {matcher.get_error()}")
        return matcher


def mask_logits(
    logits: torch.Tensor,  # [B, V] float
    matchers: Sequence[llguidance.LLMatcher | None],
) -> torch.Tensor:
    """`logits` with -inf at every token a row's matcher does not allow next (rows without a
    matcher unchanged). The masks are computed on the host, one bit a token, in parallel."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return logits
    vocab, device = logits.shape[1], logits.device
    words = _bitmasks([matchers[i] for i in rows], vocab)  # [R, ceil(V / 32)] int32, host
    words = words.to(device, non_blocking=True)  # unpacked where the logits are
    bits = torch.arange(32, dtype=torch.int32, device=device)  # [32]
    allowed = ((words.unsqueeze(-1) >> bits) & 1).flatten(1)[:, :vocab].bool()  # [R, V]
    index = torch.tensor(rows).to(device, non_blocking=True)
    out = logits.clone()
    out[index] = logits[index].masked_fill(~allowed, float("-inf"))
    return out


_executor: llguidance.LLExecutor | None = None


def _bitmasks(matchers: Sequence[llguidance.LLMatcher], vocab: int) -> torch.Tensor:
    """The matchers' next-token masks, [len(matchers), ceil(vocab / 32)] int32, computed by
    llguidance's thread pool (the GIL released): about 0.6 ms a row for a 49K vocabulary."""
    global _executor
    import llguidance

    if _executor is None:
        _executor = llguidance.LLExecutor()
    words = torch.zeros(len(matchers), -(-vocab // 32), dtype=torch.int32)
    targets = [(matcher, row) for row, matcher in enumerate(matchers)]
    _executor.unsafe_compute_mask_ptr(targets, words.data_ptr(), words.shape[1] * 4, len(targets))
    return words


def forced_tokens(matcher: llguidance.LLMatcher, room: int) -> list[int]:
    """The tokens the guide allows no alternative to next (jump-forward), at most `room`,
    fed to the matcher: the engine appends them without sampling."""
    forced = matcher.compute_ff_tokens()[: max(room, 0)]
    if forced and not matcher.consume_tokens(forced):
        raise RuntimeError(f"guided decoding: forced tokens {forced} were refused "
                           f"({matcher.get_error()})")  # fmt: skip
    return forced


def advance(matcher: llguidance.LLMatcher, token: int) -> bool:
    """Feed the sampled `token`; True when the guided text is complete (stop the sequence)."""
    if not matcher.consume_token(token):
        raise RuntimeError(f"guided decoding: token {token} was sampled against the guide "
                           f"({matcher.get_error()})")  # fmt: skip
    return matcher.is_stopped()
