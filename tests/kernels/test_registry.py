"""get_attention_backend: names, lazy imports and the errors a caller sees."""

from __future__ import annotations

import pytest
import torch

from parrotlet_kernels.reference import TorchReferenceBackend
from parrotlet_kernels.registry import (
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


def test_defaults():
    assert backend_names() == ("reference", "flashinfer")
    assert default_backend_name(torch.device("cpu")) == "reference"
    assert default_backend_name(torch.device("cuda")) == "flashinfer"
