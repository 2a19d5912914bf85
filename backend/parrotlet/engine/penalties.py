"""Presence, frequency and repetition penalties, and OpenAI's logit bias, in the engine step:
the runner applies them to a step's logits before guided decoding's mask and the sampler. The
penalties come from each penalized sequence's tokens (the engine reads a step with penalized
sequences before launching the next, so that every token is known on the host); the bias is
fixed per request.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from parrotlet.engine.sequence import Sequence as Seq


def apply_penalties(
    logits: torch.Tensor,  # [B, V] float
    seqs: Sequence[Seq],  # row i's sequence
) -> torch.Tensor:
    """`logits` with each penalized row's penalties applied, in vLLM's order: the repetition
    penalty on every token of the prompt and output (a positive logit divided by it, a negative
    one multiplied), then OpenAI's frequency (times the token's count in the output) and
    presence (once a token is in the output) penalties subtracted."""
    rows = [i for i, s in enumerate(seqs) if s.params.penalized]
    if not rows:
        return logits
    out = logits.clone()
    for i in rows:
        out[i] = _penalize(logits[i], seqs[i])
    return out


def _penalize(row: torch.Tensor, seq: Seq) -> torch.Tensor:  # [V]
    params, vocab = seq.params, row.shape[0]
    outputs = _ids(seq.output_token_ids, row.device)
    counts = torch.bincount(outputs, minlength=vocab)[:vocab].to(row.dtype)  # [V]
    if params.repetition_penalty != 1:
        prompt = _ids(seq.token_ids[: seq.num_prompt_tokens], row.device)
        seen = counts > 0
        seen[prompt] = True
        scaled = torch.where(row > 0, row / params.repetition_penalty,
                             row * params.repetition_penalty)  # fmt: skip
        row = torch.where(seen, scaled, row)
    return row - params.frequency_penalty * counts - params.presence_penalty * (counts > 0)


def _ids(ids: list[int], device: torch.device) -> torch.Tensor:
    """Token ids as an int64 tensor on `device` (empty too), copied without a sync."""
    return torch.tensor(ids, dtype=torch.long).to(device, non_blocking=True)


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
        values = torch.tensor(biases, dtype=logits.dtype).to(logits.device, non_blocking=True)
        out[i, _ids(list(tokens), logits.device)] += values
    return out
