"""PromptAssembler: builds a call's prompt as token ids from text segments and variable values.

Generated variables are spliced as the token ids they were generated as; text is tokenized once
per distinct string. With `chat`, the text before the first output is wrapped in the model's chat
template (the template's head and tail are tokenized once).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

_MARK = "\x00parrotlet-content\x00"


class PromptAssembler:
    """Token-level prompt assembly for one tokenizer."""

    def __init__(self, tokenizer, stop_token_ids: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop_token_ids = set(stop_token_ids)
        self.encode = lru_cache(maxsize=4096)(self._encode)
        self.chat_head, self.chat_tail = self._chat_parts()

    def _encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False))

    def _chat_parts(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Token ids the chat template puts before and after a single user message."""
        if not getattr(self.tokenizer, "chat_template", None):
            return (), ()
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": _MARK}], tokenize=False, add_generation_prompt=True
        )
        head, _, tail = rendered.partition(_MARK)
        return self.encode(head), self.encode(tail)

    def spliceable_ids(self, value: str, generated: Sequence[int]) -> list[int] | None:
        """The generated ids to splice for `value`, or None where they do not spell it exactly
        (e.g. a stop string cut the text): then consumers tokenize the text instead."""
        ids = list(generated)
        while ids and ids[-1] in self.stop_token_ids:
            ids.pop()
        decoded = self.tokenizer.decode(ids, skip_special_tokens=True)
        return ids if decoded == value else None
