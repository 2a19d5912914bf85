"""TokenCache: least recently used texts go first, within an entry and a character bound."""

from __future__ import annotations

import pytest

from parrotlet.serve.token_cache import TokenCache


def make_cache(max_entries: int = 3, max_chars: int = 10) -> TokenCache:
    return TokenCache(max_entries=max_entries, max_chars=max_chars)


def test_the_least_recently_used_text_goes_first_past_the_entry_bound() -> None:
    cache = make_cache()
    for text, ids in (("a", (1,)), ("b", (2,)), ("c", (3,))):
        cache.put(text, ids)
    assert cache.get("a") == (1,)  # "b" is now the least recently used

    cache.put("d", (4,))

    assert [cache.get(t) for t in "abcd"] == [(1,), None, (3,), (4,)]
    assert (len(cache), cache.num_chars) == (3, 3)


def test_texts_go_until_the_characters_fit() -> None:
    cache = make_cache(max_entries=10)
    cache.put("aaaa", (1,))
    cache.put("bbbb", (2,))

    cache.put("cccccc", (3,))  # 14 chars: "aaaa" goes, then 10 fit

    assert [cache.get(t) for t in ("aaaa", "bbbb", "cccccc")] == [None, (2,), (3,)]
    assert cache.num_chars == 10


def test_a_text_longer_than_the_bound_is_not_kept() -> None:
    cache = make_cache()
    cache.put("a", (1,))

    cache.put("x" * 11, (9,))

    assert (cache.get("x" * 11), cache.get("a"), cache.num_chars) == (None, (1,), 1)


def test_bounds_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="must be >= 1: 0, 10"):
        TokenCache(max_entries=0, max_chars=10)
