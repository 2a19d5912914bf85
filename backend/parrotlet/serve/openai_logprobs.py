"""OpenAI's `logprobs` objects for the OpenAI-compatible routes (openai_responses.py builds the
bodies): the engine's TokenLogprobs (engine/logprobs.py) with each token's text. A token's text
is the tokenizer's decoding of that token alone (a piece of a multi-byte character decodes to
"\ufffd", as in vLLM); `bytes` are that text's UTF-8 bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from parrotlet.engine.logprobs import TokenLogprob


class LogprobFormatter:
    """Formats one request's logprobs; remembers token texts it has decoded."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        if token_id not in self._texts:
            self._texts[token_id] = self.tokenizer.decode([token_id])
        return self._texts[token_id]

    def chat(self, logprobs: Sequence[TokenLogprob]) -> dict[str, Any]:
        """Chat's `{"content": [{token, logprob, bytes, top_logprobs}, ...]}`."""
        content = [{**self._entry(lp.token_id, lp.logprob),
                    "top_logprobs": [self._entry(i, p) for i, p in lp.top]}
                   for lp in logprobs]  # fmt: skip
        return {"content": content}

    def completion(self, logprobs: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
        """Completions' `{tokens, token_logprobs, top_logprobs, text_offset}`; `offset`: the
        text's length before these tokens (a stream's earlier chunks)."""
        tokens = [self.text(lp.token_id) for lp in logprobs]
        offsets = []
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        return {
            "tokens": tokens,
            "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [{self.text(i): p for i, p in lp.top} for lp in logprobs],
            "text_offset": offsets,
        }

    def _entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self.text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
