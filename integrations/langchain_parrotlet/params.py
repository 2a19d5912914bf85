"""ParrotletParams: the fields ParrotletLLM and ChatParrotlet share — where the server is and how
to sample — and their translation into parrotlet SamplingParams and OpenAI request bodies.
"""

from __future__ import annotations

import warnings
from typing import Any

from langchain_core.caches import BaseCache
from langchain_core.globals import get_llm_cache
from langchain_core.utils import from_env, secret_from_env
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from langchain_parrotlet.connection import Connection, connection_for_client, remote_connection
from langchain_parrotlet.scope import GraphScope, active_scope
from parrotlet import Client
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.serve.structured_output import request_guide

DEFAULT_BASE_URL = "http://localhost:8000"
_CALL_OPTIONS = ("temperature", "top_p", "top_k", "seed", "max_tokens", "presence_penalty",
                 "frequency_penalty", "repetition_penalty", "logit_bias")  # fmt: skip
_PENALTIES = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0}
_GUIDE_FIELDS = {"json_schema": "json", "regex": "regex", "grammar": "grammar"}


class ParrotletParams(BaseModel):
    """Connection and sampling fields of the parrotlet LangChain models."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    base_url: str = Field(default_factory=from_env("PARROTLET_BASE_URL", default=DEFAULT_BASE_URL))
    """URL of a `parrotlet serve` server (env PARROTLET_BASE_URL); unused when `client` is set."""

    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("PARROTLET_API_KEY", default=None)
    )
    """Bearer key of the server (env PARROTLET_API_KEY); None when it runs without keys."""

    client: Client | None = Field(default=None, exclude=True)
    """A parrotlet Client to share, e.g. `parrotlet.Client.in_process()`. Graph calls go through
    it; a remote Client's one-off requests still use base_url and api_key."""

    model_name: str | None = Field(default=None, alias="model")
    """The served model's name, checked by the server; None: whatever it serves."""

    temperature: float | None = None
    """Sampling temperature; 0 is greedy. None: the server's default (1.0)."""

    max_tokens: int = 256
    """Most tokens to generate per call."""

    top_p: float | None = None
    """Nucleus sampling mass in (0, 1]; None: off."""

    top_k: int | None = None
    """Sample among the k likeliest tokens; None: off."""

    seed: int | None = None
    """Seed of the call's sampler, for reproducible non-greedy sampling."""

    stop: list[str] | None = None
    """Stop strings (excluded from the output); a call's own `stop` replaces them."""

    presence_penalty: float | None = None
    """OpenAI's presence penalty in [-2, 2]: subtracted from a token already in the output."""

    frequency_penalty: float | None = None
    """OpenAI's frequency penalty in [-2, 2]: times a token's count in the output."""

    repetition_penalty: float | None = None
    """vLLM's / transformers' repetition penalty (> 0; 1 is off) on prompt and output tokens."""

    logit_bias: dict[int, float] | None = None
    """OpenAI's logit bias: token id -> a bias in [-100, 100] added to its logit."""

    timeout: float = 60.0
    """Seconds to connect / send a request (generation itself is bounded by the server)."""

    max_retries: int = 2
    """Retries of a request whose connection failed (remote servers only)."""

    streaming: bool = False
    """Generate through `stream` even when called with `invoke`."""

    @model_validator(mode="after")
    def _check_sampling(self) -> ParrotletParams:
        self.sampling_params()  # ValueError naming the bad field
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        return self

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"api_key": "PARROTLET_API_KEY"}

    def connection(self) -> Connection:
        """The shared Connection to this model's server (opened on first use)."""
        key = self.api_key.get_secret_value() if self.api_key is not None else None
        if self.client is not None:
            return connection_for_client(
                self.client, self.base_url, key, self.timeout, self.max_retries
            )
        return remote_connection(self.base_url, key, self.timeout, self.max_retries)

    def served_model_name(self) -> str:
        """`model_name`, or the name the server reports (response metadata needs one)."""
        return self.model_name or self.connection().model_name

    def graph_scope(self) -> GraphScope | None:
        """The graph scope this model's calls join: the one open on its server, unless an LLM
        cache applies to the model. LangChain would cache the unresolved output, whose
        characters are a reference (a persistent cache would hand them to a later process,
        where they name another call), so such calls run eagerly and cache real text."""
        scope = active_scope(self.connection())
        if scope is None or not self._cached():
            return scope
        warnings.warn(
            f"{type(self).__name__} runs its calls eagerly inside parrotlet_graph: an LLM cache "
            "applies to it (cache=False on the model keeps them in the graph)",
            stacklevel=2,
        )
        return None

    def batch_as_graph(self, num_inputs: int) -> bool:
        """Whether a batch goes to the server as one graph of its own: two or more inputs, no
        graph scope open (the batch joins it), and no LLM cache (graph_scope)."""
        return num_inputs >= 2 and not self._cached() and active_scope(self.connection()) is None

    def _cached(self) -> bool:
        """Whether LangChain caches this model's generations (BaseLanguageModel.cache's rule)."""
        cache = getattr(self, "cache", None)
        if isinstance(cache, BaseCache):
            return True
        return cache is not False and get_llm_cache() is not None

    def sampling_params(
        self, stop: list[str] | None = None, options: dict[str, Any] | None = None
    ) -> SamplingParams:
        """This model's sampling, with a call's `stop` and keyword overrides applied."""
        options = dict(options or {})
        allowed = [*_CALL_OPTIONS, "response_format"]
        unknown = sorted(set(options) - {*allowed, "model"})
        if unknown:
            raise ValueError(f"unsupported call options {unknown}; allowed: {allowed}")
        values = {name: getattr(self, name) for name in _CALL_OPTIONS}
        values.update({k: v for k, v in options.items() if k in _CALL_OPTIONS})
        return SamplingParams(
            temperature=1.0 if values["temperature"] is None else values["temperature"],
            top_p=1.0 if values["top_p"] is None else values["top_p"],
            top_k=-1 if values["top_k"] is None else values["top_k"],
            seed=values["seed"],
            max_tokens=values["max_tokens"],
            stop=tuple(stop if stop is not None else self.stop or ()),
            **{
                name: default if values[name] is None else values[name]
                for name, default in _PENALTIES.items()
            },
            logit_bias=values["logit_bias"] or {},
            # OpenAI's response_format (json_object, json_schema): guided decoding, also as a
            # graph call, so a structured output can feed the next call on the server
            guide=request_guide(options.get("response_format"), None),
        )

    def openai_body(self, sampling: SamplingParams, options: dict[str, Any]) -> dict[str, Any]:
        """The sampling fields of an OpenAI-compatible request body."""
        body: dict[str, Any] = {
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "stop": list(sampling.stop),
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        for name, default in _PENALTIES.items():
            if getattr(sampling, name) != default:
                body[name] = getattr(sampling, name)
        if sampling.logit_bias:
            body["logit_bias"] = {str(token): bias for token, bias in sampling.logit_bias}
        if sampling.guide is not None:
            body["structured_outputs"] = {_GUIDE_FIELDS[sampling.guide.kind]: sampling.guide.spec}
        model = options.get("model", self.model_name)
        if model is not None:
            body["model"] = model
        return body

    def ls_fields(self, model_type: str, stop: list[str] | None, **kwargs: Any) -> dict[str, Any]:
        """LangSmith tracing parameters (`_get_ls_params`)."""
        params: dict[str, Any] = {
            "ls_provider": "parrotlet",
            "ls_model_name": kwargs.get("model") or self.model_name or "parrotlet",
            "ls_model_type": model_type,
            "ls_max_tokens": kwargs.get("max_tokens", self.max_tokens),
        }
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        stops = stop if stop is not None else self.stop
        if stops:
            params["ls_stop"] = list(stops)
        return params

    def identifying_fields(self) -> dict[str, Any]:
        """What distinguishes this model's outputs (`_identifying_params`)."""
        where = "in-process" if self.client is not None else self.base_url
        names = ("model_name", "temperature", "max_tokens", "top_p", "top_k", "seed", "stop",
                 *_PENALTIES)  # fmt: skip
        return {"server": where, **{name: getattr(self, name) for name in names}}


def usage_of(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """LangChain UsageMetadata for one call."""
    return {
        "input_tokens": prompt_tokens,
        "output_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
