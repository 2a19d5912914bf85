"""Presence, frequency and repetition penalties, OpenAI's logit bias and vLLM's min_tokens in
the engine step: the runner applies them to a step's logits before guided decoding's mask and
the sampler.

The penalties read how often each token is in a sequence's output, which TokenCounts keeps on
the logits' device: each sampled token is counted there by the step that samples it, so the
next step (launched before the host has read that token, under async scheduling) penalizes
with it and no host sync is needed. The bias is fixed per request.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.engine.sequence import Sequence as Seq


@dataclass
class _Counts:
    output: torch.Tensor  # [V] float32: occurrences of each token in the output
    prompt: torch.Tensor  # [V] bool: the token is in the prompt (the repetition penalty's)


class TokenCounts:
    """Per penalized sequence (by request id), on `device`: its output's token counts and its
    prompt's tokens, from the host's tokens when it is first penalized, then kept up to date
    by `record` (sampled tokens, on the device) and `add` (tokens the host appends itself:
    a guide's forced tokens)."""

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self._one = torch.ones(1, device=device)
        self._counts: dict[str, _Counts] = {}

    def penalize(
        self,
        logits: torch.Tensor,  # [B, V] float
        seqs: Sequence[Seq],  # row i's sequence
    ) -> torch.Tensor:
        """`logits` with each penalized row's penalties applied, in vLLM's order: the
        repetition penalty on every token of the prompt and output (a positive logit divided by
        it, a negative one multiplied), then OpenAI's frequency (times the token's count in the
        output) and presence (once a token is in the output) penalties subtracted."""
        rows = [i for i, s in enumerate(seqs) if s.params.penalized]
        if not rows:
            return logits
        out = logits.clone()
        for i in rows:
            out[i] = _penalize(logits[i], seqs[i].params, self._of(seqs[i]))
        return out

    def record(self, seqs: Sequence[Seq], tokens: torch.Tensor) -> None:
        """Count each penalized row's sampled token (`tokens`: [B] on the device)."""
        for i, seq in enumerate(seqs):
            if seq.params.penalized:
                self._of(seq).output.index_add_(0, tokens[i : i + 1], self._one)

    def add(self, seq: Seq, tokens: Sequence[int]) -> None:
        """Count tokens the host appended to a penalized sequence's output."""
        if seq.params.penalized and seq.request_id in self._counts:
            self._counts[seq.request_id].output += _bincount(tokens, self.vocab_size, self.device)

    def release(self, request_id: str) -> None:
        self._counts.pop(request_id, None)

    def _of(self, seq: Seq) -> _Counts:
        """The sequence's counts, built from its host tokens the first time (before its first
        sampled token: every token is known then)."""
        counts = self._counts.get(seq.request_id)
        if counts is None:
            output = _bincount(seq.output_token_ids, self.vocab_size, self.device)
            prompt = _bincount(seq.token_ids[: seq.num_prompt_tokens], self.vocab_size,
                               self.device) > 0  # fmt: skip
            counts = self._counts[seq.request_id] = _Counts(output, prompt)
        return counts


def _penalize(row: torch.Tensor, params: SamplingParams, counts: _Counts) -> torch.Tensor:  # [V]
    output = counts.output.to(row.dtype)
    if params.repetition_penalty != 1:
        seen = (output > 0) | counts.prompt
        scaled = torch.where(row > 0, row / params.repetition_penalty,
                             row * params.repetition_penalty)  # fmt: skip
        row = torch.where(seen, scaled, row)
    return row - params.frequency_penalty * output - params.presence_penalty * (output > 0)


def _bincount(ids: Sequence[int], vocab_size: int, device: torch.device) -> torch.Tensor:
    """[V] float32 counts of `ids` on `device`, copied without a sync."""
    host = torch.bincount(torch.tensor(list(ids), dtype=torch.long), minlength=vocab_size)
    return host[:vocab_size].float().to(device, non_blocking=True)


def apply_logit_bias(
    logits: torch.Tensor,  # [B, V] float
    seqs: Sequence[Seq],  # row i's sequence
) -> torch.Tensor:
    """`logits` with each row's `logit_bias` added to its tokens (rows without one unchanged)."""
    rows = [i for i, s in enumerate(seqs) if s.params.logit_bias]
    if not rows:
        return logits
    out = logits.clone()
    for i in rows:
        tokens, biases = zip(*seqs[i].params.logit_bias, strict=True)
        ids = _on_device(tokens, torch.long, logits.device)
        out[i, ids] += _on_device(biases, logits.dtype, logits.device)
    return out


def apply_min_tokens(
    logits: torch.Tensor,  # [B, V] float
    seqs: Sequence[Seq],  # row i's sequence
    eos_token_ids: Sequence[int],
) -> torch.Tensor:
    """`logits` with -inf at the stop token ids and EOS (unless ignored) of each row that has
    fewer than `min_tokens` output tokens (pending ones counted: the row samples the next)."""
    rows = [i for i, s in enumerate(seqs)
            if s.num_tokens - s.num_prompt_tokens < s.params.min_tokens]  # fmt: skip
    if not rows:
        return logits
    out = logits.clone()
    for i in rows:
        params = seqs[i].params
        banned = {*params.stop_token_ids, *(() if params.ignore_eos else eos_token_ids)}
        out[i, _on_device(tuple(sorted(banned)), torch.long, logits.device)] = float("-inf")
    return out


@functools.lru_cache(maxsize=1024)
def _on_device(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` as a tensor on `device`, built once: a request's bias and stop ids are the same
    at every step, so its steps need not copy them again."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)
