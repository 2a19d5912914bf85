"""Engine step, last stage: turns each running sequence's last-position logits into its next
token id (greedy argmax, or temperature -> top-k -> top-p -> a draw from the row's generator),
and for rows that ask, the sampled tokens' log-probabilities (token_logprobs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from parrotlet.engine.sampling_params import SamplingParams

_NEVER = 2.0  # a top_p threshold that cumulative probabilities never reach: top-p off


def to_device(values: Sequence[int] | Sequence[float], device: torch.device) -> torch.Tensor:
    """A small host list as a device tensor without waiting for the device's queue (a plain
    `torch.tensor(..., device=cuda)` copy synchronizes the stream, which async scheduling must
    never do)."""
    return torch.tensor(values).to(device, non_blocking=True)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A generator seeded for one sequence, or None (use the global RNG) when ``seed`` is None.

    The generator must live on the device of the logits it will sample from.
    """
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class Sampler:
    """Samples one token per row of a logits batch, each row with its own parameters.

    Invariants: greedy rows (temperature 0) return exactly ``argmax``; a sampled row's result
    depends only on its logits, its parameters and its generator's state, never on the other rows
    of the batch, so a seeded request is reproducible whatever it is batched with. Each sampled
    row advances its generator by exactly one draw of ``V`` exponentials.
    """

    def __call__(
        self,
        logits: torch.Tensor,  # [B, V] float32
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator | None],
    ) -> torch.Tensor:  # [B] int64
        _check_batch(logits, params, generators)
        logits = logits.float()
        greedy = [i for i, p in enumerate(params) if p.greedy]
        if len(greedy) == len(params):
            return logits.argmax(dim=-1)
        out = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)  # [B]
        if greedy:
            rows = to_device(greedy, logits.device)
            out[rows] = logits[rows].argmax(dim=-1)
        sampled = [i for i, p in enumerate(params) if not p.greedy]
        rows = to_device(sampled, logits.device)
        out[rows] = _sample(
            logits[rows], [params[i] for i in sampled], [generators[i] for i in sampled]
        )
        return out


def token_logprobs(
    logits: torch.Tensor,  # [N, V] raw: before penalties, masks and temperature
    tokens: torch.Tensor,  # [N] the sampled tokens
    num_top: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # [N, 1 + k] float32, [N, k] int64
    """Each row's log-softmax at its sampled token (column 0) and its `num_top` largest values
    (columns 1..k, largest first) with their token ids; queued on the device, no sync."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [N, V]
    chosen = logprobs.gather(1, tokens.view(-1, 1))  # [N, 1]
    top_values, top_ids = logprobs.topk(num_top, dim=-1)  # [N, k]
    return torch.cat([chosen, top_values], dim=1), top_ids


def _check_batch(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be [batch, vocab], got shape {tuple(logits.shape)}")
    if len(params) != logits.shape[0]:
        raise ValueError(f"params has {len(params)} entries for {logits.shape[0]} logits rows")
    if len(generators) != logits.shape[0]:
        raise ValueError(
            f"generators has {len(generators)} entries for {logits.shape[0]} logits rows"
        )


def _sample(
    logits: torch.Tensor,  # [N, V]
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> torch.Tensor:  # [N]
    device, vocab = logits.device, logits.shape[1]
    temps = to_device([p.temperature for p in params], device)  # [N]
    logits = logits / temps.unsqueeze(1)  # [N, V]
    top_k = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
    top_p = [p.top_p if p.top_p < 1 else _NEVER for p in params]
    if any(k < vocab for k in top_k) or any(p < 1 for p in top_p):
        top_k_t = to_device(top_k, device)  # [N]
        top_p_t = to_device(top_p, device)  # [N]
        logits = logits.masked_fill(_top_k_top_p_mask(logits, top_k_t, top_p_t), float("-inf"))
    probs = logits.softmax(dim=-1)  # [N, V]
    return _draw(probs, generators)


def _top_k_top_p_mask(
    logits: torch.Tensor,  # [N, V]
    top_k: torch.Tensor,  # [N] int, V means off
    top_p: torch.Tensor,  # [N] float, >= 1 means off
) -> torch.Tensor:  # [N, V] bool, True = removed, in vocab order
    """Top-k, then top-p over the renormalized top-k set; the top token is never removed."""
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)  # [N, V]
    positions = torch.arange(logits.shape[1], device=logits.device)  # [V]
    remove = positions.unsqueeze(0) >= top_k.unsqueeze(1)  # [N, V]
    probs = sorted_logits.masked_fill(remove, float("-inf")).softmax(dim=-1)  # [N, V]
    mass_before = probs.cumsum(dim=-1) - probs  # [N, V], exactly 0 at position 0
    remove |= mass_before >= top_p.unsqueeze(1)
    return torch.empty_like(remove).scatter_(1, order, remove)


def _draw(
    probs: torch.Tensor,  # [N, V]
    generators: list[torch.Generator | None],
) -> torch.Tensor:  # [N]
    """One categorical draw per row: argmax(p / E) with E ~ Exp(1) i.i.d. picks i w.p. p_i.

    Noise is drawn in vocab order from the row's generator (the global RNG for None rows), so a
    seeded row sees the same noise whatever filtering the rest of the batch needed.
    """
    noise = torch.empty_like(probs)  # [N, V]
    if any(g is None for g in generators):
        noise.exponential_()
    for row, generator in enumerate(generators):
        if generator is not None:
            noise[row].exponential_(generator=generator)
    noise.clamp_(min=torch.finfo(noise.dtype).tiny)  # exponential_ may return 0: avoid 0 / 0
    return (probs / noise).argmax(dim=-1)
