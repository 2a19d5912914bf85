"""PromptAssembler: builds a call's prompt as token ids from text segments and variable values.

Generated variables are spliced as the token ids they were generated as; text is tokenized once
per distinct string. With `chat`, the messages before the first output (graph/ir.py
`Call.messages`) are wrapped in the model's chat template: the template's "glue" around the
message contents is rendered once per role sequence (with marker contents, split at the markers)
and tokenized once, so a prompt is glue ids and content ids interleaved. Submits tokenize their
texts with `encode_all`, off the event loop where they are long.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache

from parrotlet.graph.ir import Call, GraphError, Input, Output, Text
from parrotlet.serve.token_cache import TokenCache, TokenIds

_MARK = "\x00parrotlet-content-{}\x00"

SegmentIds = Callable[[Text | Input], Sequence[int]]

# Texts of more characters than this in all are tokenized in a worker thread (about 1 us a
# character: 1M characters held the event loop, which every session shares, 0.9 s).
OFF_LOOP_CHARS = 8192


class PromptAssembler:
    """Token-level prompt assembly for one tokenizer."""

    def __init__(self, tokenizer, stop_token_ids: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop_token_ids = set(stop_token_ids)
        self.cache = TokenCache()
        self.chat_glue = lru_cache(maxsize=256)(self._chat_glue)
        self.chat_head, self.chat_tail = self.chat_glue(("user",))

    def encode(self, text: str) -> TokenIds:
        """The ids of `text` (cached), tokenized on the calling thread."""
        ids = self.cache.get(text)
        if ids is None:
            ids = self._encode(text)
            self.cache.put(text, ids)
        return ids

    async def encode_all(self, texts: Iterable[str]) -> dict[str, TokenIds]:
        """The ids of each of `texts` (cached); those not cached are tokenized in a worker thread
        when they are long, so the event loop keeps serving other sessions meanwhile."""
        ids: dict[str, TokenIds] = {}
        missing: list[str] = []
        for text in dict.fromkeys(texts):
            found = self.cache.get(text)
            if found is None:
                missing.append(text)
            else:
                ids[text] = found
        if sum(map(len, missing)) > OFF_LOOP_CHARS:
            encoded = await asyncio.to_thread(lambda: [self._encode(text) for text in missing])
        else:
            encoded = [self._encode(text) for text in missing]
        for text, text_ids in zip(missing, encoded, strict=True):
            ids[text] = text_ids
            self.cache.put(text, text_ids)
        return ids

    def _encode(self, text: str) -> TokenIds:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False))

    def prefix_ids(self, call: Call, segment_ids: SegmentIds) -> list[int]:
        """The prompt ids up to the first output; `segment_ids` gives a Text's or Input's ids."""
        if not call.chat:
            ids: list[int] = []
            for segment in call.segments:
                if isinstance(segment, Output):
                    break
                ids.extend(segment_ids(segment))  # type: ignore[arg-type]
            return ids
        messages = call.messages
        glue = self.chat_glue(tuple(role for role, _ in messages))
        ids = list(glue[0])
        for (_, content), after in zip(messages, glue[1:], strict=True):
            for segment in content:
                ids.extend(segment_ids(segment))
            ids.extend(after)
        return ids

    def _chat_glue(self, roles: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
        """Token ids the chat template puts before, between and after messages of `roles`
        (len(roles) + 1 pieces); GraphError where the template rejects the role sequence."""
        if not getattr(self.tokenizer, "chat_template", None):
            return ((),) * (len(roles) + 1)
        marks = [_MARK.format(i) for i in range(len(roles))]
        messages = [{"role": r, "content": m} for r, m in zip(roles, marks, strict=True)]
        try:
            rest = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # jinja raises TemplateError for unsupported role orders
            raise GraphError(f"the chat template rejects roles {list(roles)}: {exc}") from None
        pieces = []
        for mark in marks:
            piece, found, rest = rest.partition(mark)
            if not found:
                raise GraphError(f"the chat template drops a message of roles {list(roles)}")
            pieces.append(self.encode(piece))
        return (*pieces, self.encode(rest))

    def spliceable_ids(self, value: str, generated: Sequence[int]) -> list[int] | None:
        """The generated ids to splice for `value`, or None where they do not spell it exactly
        (e.g. a stop string cut the text): then consumers tokenize the text instead."""
        ids = list(generated)
        while ids and ids[-1] in self.stop_token_ids:
            ids.pop()
        decoded = self.tokenizer.decode(ids, skip_special_tokens=True)
        return ids if decoded == value else None
