"""API keys: the first step of every HTTP request turns its bearer key into a tenant id.

Sessions belong to tenants, so two keys never see each other's variables.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence

from starlette.requests import Request

from parrotlet.serve.errors import AuthError

ENV_VAR = "PARROTLET_API_KEYS"
ENGINE_ENV_VAR = "PARROTLET_ENGINE_KEYS"
DEFAULT_TENANT = "default"


def tenant_id(key: str) -> str:
    """The tenant of an API key: a stable id that does not reveal the key."""
    return "t-" + hashlib.sha256(key.encode()).hexdigest()[:16]


class ApiKeys:
    """The accepted API keys; with none, authentication is off and every caller is "default".

    Keys are compared in constant time (each request is checked against every key).
    """

    def __init__(self, keys: Sequence[str] = ()) -> None:
        for i, key in enumerate(keys):
            if not isinstance(key, str) or not key or key != key.strip():
                raise ValueError(f"api key #{i} must be a non-empty string without spaces")
        self._keys = tuple(dict.fromkeys(key.encode() for key in keys))

    @classmethod
    def from_sources(
        cls,
        flag_keys: Sequence[str] | None,
        environ: Mapping[str, str] = os.environ,
        env_var: str = ENV_VAR,
    ) -> ApiKeys:
        """Keys from the flags if any, else the comma-separated `env_var`."""
        if flag_keys:
            return cls(flag_keys)
        raw = environ.get(env_var, "")
        return cls([k.strip() for k in raw.split(",") if k.strip()])

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def tenant_for(self, authorization: str | None) -> str:
        """The tenant of an `Authorization: Bearer <key>` header; AuthError if missing or wrong."""
        if not self.enabled:
            return DEFAULT_TENANT
        if not authorization:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthError("malformed Authorization header: expected 'Bearer <key>'")
        candidate = key.strip().encode()
        matched = False
        for accepted in self._keys:  # no early exit: time does not depend on which key matched
            matched |= hmac.compare_digest(candidate, accepted)
        if not matched:
            raise AuthError("invalid API key")
        return tenant_id(candidate.decode())


async def request_tenant(request: Request) -> str:
    """FastAPI dependency: the tenant of the request, checked against the app's `ApiKeys`."""
    api_keys: ApiKeys = request.app.state.api_keys
    return api_keys.tenant_for(request.headers.get("authorization"))


async def request_engine_admin(request: Request) -> None:
    """FastAPI dependency of engine registration: it needs an engine key, never a tenant key
    (an engine sees every prompt sent to it). With no keys at all (auth off) anyone may register.
    """
    engine_keys: ApiKeys = request.app.state.engine_keys
    if engine_keys.enabled:
        engine_keys.tenant_for(request.headers.get("authorization"))
    elif request.app.state.api_keys.enabled:
        raise AuthError(
            "engine registration needs an engine key: start the server with --engine-key"
        )
