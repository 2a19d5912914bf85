"""Synthetic prompt text of exact token lengths: random words that are one token each.

Workloads build prompts from these so every variant sees the same token counts; `text(n)` is
checked to encode to exactly n tokens.
"""

from __future__ import annotations

import functools
import random
import re

_WORD = re.compile(r"^ [a-z]{3,10}$")


class SyntheticText:
    """Random word sequences that encode to an exact number of tokens with `tokenizer`."""

    def __init__(self, tokenizer, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.rng = random.Random(seed)
        self.words = _one_token_words(tokenizer)
        if len(self.words) < 100:
            raise ValueError(f"tokenizer has only {len(self.words)} one-token words; need 100")

    def text(self, num_tokens: int) -> str:
        """A string of `num_tokens` words, each one token (with its leading space)."""
        text = "".join(self.rng.choice(self.words) for _ in range(num_tokens))
        got = len(self.tokenizer.encode(text, add_special_tokens=False))
        if got != num_tokens:
            raise AssertionError(f"synthetic text encodes to {got} tokens, wanted {num_tokens}")
        return text


@functools.cache
def _one_token_words(tokenizer) -> list[str]:
    """Vocabulary entries that decode to ' word' and encode back to that single token (computed
    once per tokenizer: it scans the vocabulary)."""
    words = []
    for token_id in range(min(len(tokenizer), 50_000)):
        word = tokenizer.decode([token_id])
        if _WORD.match(word) and tokenizer.encode(word, add_special_tokens=False) == [token_id]:
            words.append(word)
    return sorted(words)
