"""TokenCache: the prompt assembler's memory of tokenized texts (serve/prompt.py).

An LRU bounded by entries and by characters: it keeps every text it caches alive, and texts may be
as long as a session's variable limit, so a count bound alone would let it hold gigabytes.
"""

from __future__ import annotations

from collections import OrderedDict

TokenIds = tuple[int, ...]


class TokenCache:
    """Token ids by text, least recently used evicted first.

    Invariant: at most `max_entries` texts of at most `max_chars` characters in all; a text longer
    than `max_chars` is not kept.
    """

    def __init__(self, max_entries: int = 4096, max_chars: int = 16_000_000) -> None:
        if max_entries < 1 or max_chars < 1:
            raise ValueError(f"max_entries and max_chars must be >= 1: {max_entries}, {max_chars}")
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.num_chars = 0
        self._ids: OrderedDict[str, TokenIds] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def get(self, text: str) -> TokenIds | None:
        ids = self._ids.get(text)
        if ids is not None:
            self._ids.move_to_end(text)
        return ids

    def put(self, text: str, ids: TokenIds) -> None:
        if len(text) > self.max_chars or text in self._ids:
            return
        self._ids[text] = ids
        self.num_chars += len(text)
        while len(self._ids) > self.max_entries or self.num_chars > self.max_chars:
            evicted, _ = self._ids.popitem(last=False)
            self.num_chars -= len(evicted)
