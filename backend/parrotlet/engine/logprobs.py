"""Log-probabilities of generated tokens (OpenAI's `logprobs`): the runner computes them on the
device right after sampling (sampler.token_logprobs), only for rows whose SamplingParams ask
(`logprobs`: how many most likely tokens to list besides the sampled one); the engine hands
them out with each RequestOutput's new tokens, and the OpenAI routes format them. No torch here:
the serving layer passes them on.

They are the model's own distribution (log-softmax of the raw logits), before penalties, a
guide's mask and temperature / top-k / top-p, as vLLM reports them by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_LOGPROBS = 20  # most likely tokens listed per position (OpenAI's and vLLM's limit)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and the `k` most likely tokens at its position
    (`top`: (token id, log-probability) pairs, most likely first)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()

    def to_list(self) -> list[Any]:
        """The wire form: [token_id, logprob, [[id, logprob], ...]]."""
        return [self.token_id, self.logprob, [list(pair) for pair in self.top]]

    @classmethod
    def from_list(cls, value: Sequence[Any]) -> TokenLogprob:
        token_id, logprob, top = value
        return cls(int(token_id), float(logprob), tuple((int(i), float(p)) for i, p in top))


def unpack(
    values: list[list[float]], ids: list[list[int]], tokens: list[int], nums: list[int]
) -> list[TokenLogprob]:
    """sampler.token_logprobs's rows (as lists) as TokenLogprobs, row i listing its first
    `nums[i]` most likely tokens."""
    return [
        TokenLogprob(token, row[0], tuple(zip(top_ids[:k], row[1 : 1 + k], strict=True)))
        for row, top_ids, token, k in zip(values, ids, tokens, nums, strict=True)
    ]
