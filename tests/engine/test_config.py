"""EngineConfig's validation: every bad field is named with the value it got."""

from __future__ import annotations

import pytest

from parrotlet.engine.config import EngineConfig


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dtype", "int8", "dtype must be auto, float32, bfloat16 or float16, got 'int8'"),
        (
            "attention_backend",
            "xformers",
            "attention_backend must be auto, reference or flashinfer, got 'xformers'",
        ),
        (
            "graph_decode_attention",
            "cuda",
            "graph_decode_attention must be flashinfer, triton or auto, got 'cuda'",
        ),
        ("device", "tpu", r"device must be cpu or cuda\[:N\], got 'tpu'"),
        ("shared_prefix_min_tokens", -1, "shared_prefix_min_tokens must be >= 0, got -1"),
        ("max_model_len", 0, "max_model_len must be >= 1, got 0"),
    ],
)
def test_bad_fields_are_named(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EngineConfig(**{field: value})


def test_defaults_keep_the_measured_kernels():
    config = EngineConfig()
    assert (config.small_batch_linear, config.graph_decode_attention) == (True, "auto")
    assert config.graph_prefix_tiles  # measured end to end: benchmarks/apps/README.md
    assert EngineConfig(graph_decode_attention="triton").graph_decode_attention == "triton"
