"""Attention backends by name, imported lazily so GPU-only code loads only when asked for.

The engine's ModelRunner calls get_attention_backend once, when it allocates the KV cache.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch

from parrotlet_kernels.interface import AttentionBackend, AttentionSpec

# name -> (module, class); a module is imported only when its backend is requested.
_BACKENDS: dict[str, tuple[str, str]] = {
    "reference": ("parrotlet_kernels.reference", "TorchReferenceBackend"),
    "flashinfer": ("parrotlet_kernels.flashinfer_backend", "FlashInferBackend"),
}


class BackendUnavailableError(RuntimeError):
    """A known backend whose module or dependencies cannot be imported here."""


def backend_names() -> tuple[str, ...]:
    """The names get_attention_backend accepts."""
    return tuple(_BACKENDS)


def default_backend_name(device: torch.device) -> str:
    """ "reference" on CPU, "flashinfer" on CUDA."""
    return "flashinfer" if device.type == "cuda" else "reference"


def get_attention_backend(
    name: str, spec: AttentionSpec, kv_caches: Sequence[torch.Tensor]
) -> AttentionBackend:
    """Build the backend `name` over `kv_caches` (one tensor per layer, `spec.kv_cache_shape`).

    Raises:
        ValueError: `name` is not a known backend.
        BackendUnavailableError: the backend's module (or a library it needs) cannot be imported.
    """
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; valid names: {', '.join(_BACKENDS)}")
    module_name, class_name = _BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailableError(f"{name} backend is not available: {exc}") from exc
    return getattr(module, class_name)(spec, kv_caches)
