"""Build a Llama-family model from a local Hugging Face folder (config.json + safetensors).

The engine calls `load_model` once at start-up; tensors stream shard by shard into the model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from parrotlet.engine.models.config import ModelConfig
from parrotlet.engine.models.llama import LlamaForCausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def load_config(path: str | Path) -> ModelConfig:
    """Read and validate `path/config.json`."""
    folder = _check_folder(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"model folder {folder} has no config.json")
    with config_file.open(encoding="utf-8") as f:
        return ModelConfig.from_hf_config(json.load(f))


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
) -> tuple[LlamaForCausalLM, ModelConfig]:
    """Build the model on `device` in `dtype` and fill it from the folder's safetensors.

    Parameters are allocated once (uninitialized) and every one is overwritten by the checkpoint;
    `load_weights` raises if any is missing. The model is returned in eval mode.
    """
    folder = _check_folder(path)
    config = load_config(folder)
    files = safetensors_files(folder)
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(_torch_dtype(dtype))
    model.to_empty(device=device)
    with torch.no_grad():
        model.load_weights(_iter_tensors(files))
    return model.eval(), config


def safetensors_files(folder: Path) -> list[Path]:
    """The checkpoint's files: the shards named by the index, else model.safetensors."""
    index = folder / INDEX_FILE
    if index.is_file():
        with index.open(encoding="utf-8") as f:
            weight_map: dict[str, str] = json.load(f).get("weight_map", {})
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [str(p) for p in files if not p.is_file()]
        if not files or missing:
            raise FileNotFoundError(f"{index} names missing shards: {missing or 'none listed'}")
        return files
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    raise FileNotFoundError(
        f"model folder {folder} has no {SINGLE_FILE} or {INDEX_FILE} "
        "(only safetensors checkpoints are supported)"
    )


def _iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) one shard at a time, so at most one shard's tensor is held."""
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, f.get_tensor(name)


def _check_folder(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    return folder


def _torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"dtype {dtype!r} is not a torch floating-point dtype")
    return resolved
