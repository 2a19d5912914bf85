"""get_attention_backend: names, lazy imports and the errors a caller sees."""

from __future__ import annotations

import importlib

import pytest
import torch

from parrotlet_kernels.reference import TorchReferenceBackend
from parrotlet_kernels.registry import (
    BackendUnavailableError,
    backend_names,
    default_backend_name,
    get_attention_backend,
)

from .attention_helpers import make_spec


def test_reference_backend_by_name():
    spec = make_spec()
    caches = spec.allocate_kv_cache()
    backend = get_attention_backend("reference", spec, caches)
    assert isinstance(backend, TorchReferenceBackend)
    assert backend.kv_caches is caches


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="'triton'; valid names: reference, flashinfer"):
        get_attention_backend("triton", make_spec(), [])


def _flashinfer_importable() -> bool:
    try:
        importlib.import_module("parrotlet_kernels.flashinfer_backend")
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_flashinfer_importable(), reason="flashinfer backend imports here")
def test_missing_flashinfer_is_a_clear_error():
    with pytest.raises(BackendUnavailableError, match=r"^flashinfer backend is not available: "):
        get_attention_backend("flashinfer", make_spec(), [])


def test_defaults():
    assert backend_names() == ("reference", "flashinfer")
    assert default_backend_name(torch.device("cpu")) == "reference"
    assert default_backend_name(torch.device("cuda")) == "flashinfer"
