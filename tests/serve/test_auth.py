"""ApiKeys: where keys come from, bearer parsing, and the tenant id of a key."""

from __future__ import annotations

import hashlib

import pytest

from parrotlet.serve.auth import ApiKeys, tenant_id
from parrotlet.serve.errors import AuthError


def test_tenant_is_a_hash_prefix_of_the_key() -> None:
    keys = ApiKeys(["alpha", "beta"])

    assert keys.tenant_for("Bearer alpha") == "t-" + hashlib.sha256(b"alpha").hexdigest()[:16]
    assert keys.tenant_for("bearer beta") == tenant_id("beta")
    assert tenant_id("alpha") != tenant_id("beta")
    assert len(tenant_id("alpha")) == 18


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing API key: send 'Authorization: Bearer <key>'"),
        ("", "missing API key: send 'Authorization: Bearer <key>'"),
        ("Basic alpha", "malformed Authorization header: expected 'Bearer <key>'"),
        ("Bearer ", "malformed Authorization header: expected 'Bearer <key>'"),
        ("Bearer alph", "invalid API key"),
        ("Bearer alphaa", "invalid API key"),
    ],
)
def test_missing_or_wrong_keys_raise_auth_error(header: str | None, message: str) -> None:
    with pytest.raises(AuthError) as raised:
        ApiKeys(["alpha"]).tenant_for(header)
    assert str(raised.value) == message


def test_without_keys_auth_is_off_and_everyone_is_default() -> None:
    keys = ApiKeys([])

    assert not keys.enabled
    assert keys.tenant_for(None) == "default"
    assert keys.tenant_for("Bearer anything") == "default"


def test_flags_win_over_the_environment() -> None:
    env = {"PARROTLET_API_KEYS": " one, two ,,"}

    from_env = ApiKeys.from_sources(None, env)
    from_flags = ApiKeys.from_sources(["three"], env)

    assert len(from_env) == 2 and from_env.tenant_for("Bearer two") == tenant_id("two")
    assert len(from_flags) == 1
    with pytest.raises(AuthError):
        from_flags.tenant_for("Bearer one")
    assert not ApiKeys.from_sources([], {}).enabled


@pytest.mark.parametrize("bad", ["", " padded", "with space "])
def test_bad_keys_are_rejected_at_startup(bad: str) -> None:
    with pytest.raises(ValueError, match="api key #1 must be a non-empty string without spaces"):
        ApiKeys(["fine", bad])
