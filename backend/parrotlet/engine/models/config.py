"""ModelConfig: the validated shape of a Llama-family model, read from a Hugging Face config.json.

The loader builds it before the model; the model runner reads it to size the KV cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling: "linear" (divide by factor) or "llama3" (Llama 3.1 smoothing)."""

    rope_type: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """Everything the plain-torch Llama family needs; built by `from_hf_config`.

    `attention_bias` puts a bias on q/k/v (always for Qwen2), `o_proj_bias` on the output
    projection; `qk_norm` applies RMSNorm over head_dim to q and k before RoPE (Qwen3).
    """

    architecture: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    o_proj_bias: bool
    qk_norm: bool
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    dtype: str

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_key_value_heads ({self.num_kv_heads}) must divide "
                f"num_attention_heads ({self.num_heads})"
            )
        if self.head_dim <= 0 or self.head_dim % 2:
            raise ValueError(f"head_dim must be a positive even number, got {self.head_dim}")
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not supported (one of {SUPPORTED_DTYPES})")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any]) -> ModelConfig:
        """Validate a Hugging Face config.json dict; ValueError names the offending field."""
        model_type = _model_type(cfg)
        _check_unsupported_features(cfg, model_type)
        num_heads = _require(cfg, "num_attention_heads", int)
        hidden_size = _require(cfg, "hidden_size", int)
        rope_theta, rope_scaling = _rope(cfg)
        return cls(
            architecture=SUPPORTED_MODEL_TYPES[model_type],
            model_type=model_type,
            vocab_size=_require(cfg, "vocab_size", int),
            hidden_size=hidden_size,
            intermediate_size=_require(cfg, "intermediate_size", int),
            num_layers=_require(cfg, "num_hidden_layers", int),
            num_heads=num_heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
            head_dim=int(cfg.get("head_dim") or hidden_size // num_heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=_require(cfg, "max_position_embeddings", int),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
            o_proj_bias=model_type != "qwen2" and bool(cfg.get("attention_bias", False)),
            qk_norm=model_type == "qwen3",
            eos_token_ids=_eos_token_ids(cfg.get("eos_token_id")),
            bos_token_id=cfg.get("bos_token_id"),
            dtype=_dtype(cfg),
        )


def _require(cfg: Mapping[str, Any], key: str, kind: type) -> Any:
    if cfg.get(key) is None:
        raise ValueError(f"config.json is missing {key!r}")
    try:
        return kind(cfg[key])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{key} must be {kind.__name__}, got {cfg[key]!r}") from exc


def _model_type(cfg: Mapping[str, Any]) -> str:
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type {model_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    architectures = cfg.get("architectures") or [SUPPORTED_MODEL_TYPES[model_type]]
    if architectures[0] != SUPPORTED_MODEL_TYPES[model_type]:
        raise ValueError(
            f"architectures {architectures!r} is not supported for model_type {model_type!r} "
            f"(expected {SUPPORTED_MODEL_TYPES[model_type]!r})"
        )
    return model_type


def _check_unsupported_features(cfg: Mapping[str, Any], model_type: str) -> None:
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {cfg['hidden_act']!r} is not supported (only 'silu')")
    if cfg.get("mlp_bias"):
        raise ValueError("mlp_bias=true is not supported")
    window = cfg.get("sliding_window")
    uses_window = model_type == "mistral" or bool(cfg.get("use_sliding_window"))
    if uses_window and window is not None and window < cfg.get("max_position_embeddings", 0):
        raise ValueError(
            f"sliding_window {window} is smaller than max_position_embeddings "
            f"{cfg.get('max_position_embeddings')}: sliding-window attention is not implemented"
        )


def _rope(cfg: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    """Read rope_parameters (transformers 5) or top-level rope_theta + rope_scaling (older)."""
    params = dict(cfg.get("rope_scaling") or {})
    params.update(cfg.get("rope_parameters") or {})
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor != 1.0 is not supported")
    if rope_type == "default":
        return theta, None
    if rope_type not in ("linear", "llama3"):
        raise ValueError(
            f"rope_scaling type {rope_type!r} is not supported (default, linear, llama3)"
        )
    if "factor" not in params:
        raise ValueError(f"rope_scaling of type {rope_type!r} is missing 'factor'")
    if rope_type == "linear":
        return theta, RopeScaling("linear", float(params["factor"]))
    keys = ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    for key in keys:
        if key not in params:
            raise ValueError(f"rope_scaling of type 'llama3' is missing {key!r}")
    return theta, RopeScaling(
        "llama3",
        float(params["factor"]),
        float(params["low_freq_factor"]),
        float(params["high_freq_factor"]),
        int(params["original_max_position_embeddings"]),
    )


def _eos_token_ids(eos: int | list[int] | None) -> tuple[int, ...]:
    if eos is None:
        return ()
    if isinstance(eos, int):
        return (eos,)
    if isinstance(eos, list | tuple) and all(isinstance(t, int) for t in eos):
        return tuple(eos)
    raise ValueError(f"eos_token_id must be an int or a list of ints, got {eos!r}")


def _dtype(cfg: Mapping[str, Any]) -> str:
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return str(dtype).removeprefix("torch.")
