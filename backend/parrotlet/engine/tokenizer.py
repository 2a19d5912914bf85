"""Tokenizer loading and prompt encoding: text and chat messages become an engine's token ids.

The engine encodes each call's prompt here; chat models get their chat template applied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a local model folder; never touches the network."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def is_chat_model(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_chat(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, Any]]
) -> list[int]:
    """Token ids of `messages` under the chat template, ending with the assistant turn's header."""
    _check_messages(messages)
    if not is_chat_model(tokenizer):
        raise ValueError("chat: the tokenizer has no chat_template; send a plain prompt instead")
    encoded = tokenizer.apply_chat_template(
        [dict(m) for m in messages], add_generation_prompt=True, tokenize=True
    )
    if isinstance(encoded, Mapping):  # transformers 5 returns a BatchEncoding
        encoded = encoded["input_ids"]
    return [int(t) for t in encoded]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, *, chat: bool) -> list[int]:
    """Token ids of `prompt`: a single user turn under the chat template when `chat`, else raw."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if chat:
        return format_chat(tokenizer, [{"role": "user", "content": prompt}])
    return list(tokenizer.encode(prompt))


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    if not messages:
        raise ValueError("messages must not be empty")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content'")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise ValueError(f"messages[{i}].{key} must be a string")
