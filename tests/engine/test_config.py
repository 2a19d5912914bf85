"""EngineConfig's validation and resolve_device: every bad field or missing device is named."""

from __future__ import annotations

import pytest
import torch

from parrotlet.engine.config import EngineConfig
from parrotlet.engine.engine import resolve_device


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
        ("device", "tpu", "device must be cpu, cuda or cuda:N, got 'tpu'"),
        ("device", "cuda:", "device must be cpu, cuda or cuda:N, got 'cuda:'"),
        ("device", "cudax", "device must be cpu, cuda or cuda:N, got 'cudax'"),
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


def test_a_device_this_machine_lacks_is_named_with_the_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ValueError, match=r"device 'cuda': this torch \(.+\) is built without CUDA"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(ValueError, match=r"device 'cuda:0': this torch \(.+\) sees no CUDA device"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match="device 'cuda:2': only 2 CUDA device"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be cpu, cuda or cuda:N, got 'gpu'"):
        resolve_device("gpu")
