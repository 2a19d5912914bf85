"""The plain-torch Llama family against transformers: configs, weight loading, varlen logits."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen3Config,
)

from parrotlet.engine.models.config import ModelConfig, RopeScaling
from parrotlet.engine.models.llama import LlamaForCausalLM
from parrotlet.engine.models.loader import load_model
from parrotlet_kernels.interface import AttentionMetadata, AttentionSpec

BLOCK_SIZE = 4
BLOCKS_PER_SEQ = 4  # each test sequence owns a fixed run of blocks: at most 16 tokens
PROMPT_LENS = (5, 11, 2)
SMALL = dict(
    vocab_size=160,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def make_hf_config(case: str) -> PretrainedConfig:
    """A tiny transformers config for each supported variant."""
    configs = {
        "llama": lambda: LlamaConfig(**SMALL),
        "llama_mha": lambda: LlamaConfig(**{**SMALL, "num_key_value_heads": 4}),
        "llama_gqa4": lambda: LlamaConfig(**{**SMALL, "num_key_value_heads": 1}),
        "llama_tied": lambda: LlamaConfig(**SMALL, tie_word_embeddings=True),
        "llama3_rope": lambda: LlamaConfig(**SMALL, rope_parameters=dict(LLAMA3_ROPE)),
        "llama_linear_rope": lambda: LlamaConfig(
            **SMALL, rope_parameters={"rope_type": "linear", "factor": 2.0}
        ),
        "llama_attention_bias": lambda: LlamaConfig(**SMALL, attention_bias=True),
        "qwen2": lambda: Qwen2Config(**SMALL),
        "qwen3": lambda: Qwen3Config(**SMALL, head_dim=32),
        "mistral": lambda: MistralConfig(**SMALL, sliding_window=None),
    }
    return configs[case]()


def make_checkpoint(folder: Path, hf_config: PretrainedConfig, **save_kwargs) -> PreTrainedModel:
    """A seeded random HF model (all weights, biases and norms perturbed) saved to `folder`."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn_like(param) * 0.1
            param.copy_(1.0 + noise if "norm" in name else noise)
    model.save_pretrained(folder, **save_kwargs)
    return model


def make_prompts(vocab_size: int, lens: tuple[int, ...] = PROMPT_LENS) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab_size, (n,), generator=generator) for n in lens]


def make_metadata(query_lens: list[int], seq_lens: list[int]) -> AttentionMetadata:
    """Sequence i owns blocks 1 + i * BLOCKS_PER_SEQ onwards; its queries are its last tokens."""
    assert max(seq_lens) <= BLOCKS_PER_SEQ * BLOCK_SIZE
    block_tables = torch.zeros(len(seq_lens), BLOCKS_PER_SEQ, dtype=torch.int32)
    slots = []
    for i, (q_len, s_len) in enumerate(zip(query_lens, seq_lens, strict=True)):
        first = 1 + i * BLOCKS_PER_SEQ
        num_blocks = math.ceil(s_len / BLOCK_SIZE)
        block_tables[i, :num_blocks] = torch.arange(first, first + num_blocks)
        slots += [first * BLOCK_SIZE + pos for pos in range(s_len - q_len, s_len)]
    starts = [0] + [sum(query_lens[: i + 1]) for i in range(len(query_lens))]
    return AttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=block_tables,
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        query_lens_host=tuple(query_lens),
        seq_lens_host=tuple(seq_lens),
    )


def make_backend(config: ModelConfig, dtype: torch.dtype, num_seqs: int):
    """A torch reference backend with BLOCKS_PER_SEQ blocks for each of `num_seqs` sequences."""
    from parrotlet_kernels.reference import TorchReferenceBackend

    spec = AttentionSpec(
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        block_size=BLOCK_SIZE,
        num_blocks=1 + num_seqs * BLOCKS_PER_SEQ,
        dtype=dtype,
        device=torch.device("cpu"),
    )
    return TorchReferenceBackend(spec, spec.allocate_kv_cache())


def run_step(model: LlamaForCausalLM, backend, ids: list[torch.Tensor], seq_lens: list[int]):
    """One engine-like step: the flat batch of `ids`, the last tokens of each sequence."""
    query_lens = [len(x) for x in ids]
    backend.plan(make_metadata(query_lens, seq_lens))
    positions = torch.cat(
        [torch.arange(s - q, s) for q, s in zip(query_lens, seq_lens, strict=True)]
    )
    with torch.no_grad():
        hidden = model(torch.cat(ids), positions, backend)  # [num_tokens, hidden]
        return model.compute_logits(hidden)  # [num_tokens, vocab]


def prefill_logits(model: LlamaForCausalLM, prompts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Logits of every prompt token, all prompts in one flat varlen batch."""
    dtype = model.embed_tokens.weight.dtype
    backend = make_backend(model.config, dtype, len(prompts))
    logits = run_step(model, backend, prompts, [len(p) for p in prompts])
    return list(logits.split([len(p) for p in prompts]))


def hf_logits(hf_model: PreTrainedModel, prompts: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [hf_model(p[None]).logits[0].float() for p in prompts]


@pytest.mark.parametrize(
    "case",
    [
        "llama",
        "llama_mha",
        "llama_gqa4",
        "llama_tied",
        "llama3_rope",
        "llama_linear_rope",
        "llama_attention_bias",
        "qwen2",
        "qwen3",
        "mistral",
    ],
)
def test_varlen_logits_match_transformers(tmp_path: Path, case: str) -> None:
    hf_model = make_checkpoint(tmp_path, make_hf_config(case))
    model, config = load_model(tmp_path)
    prompts = make_prompts(config.vocab_size)
    for ours, theirs in zip(
        prefill_logits(model, prompts), hf_logits(hf_model, prompts), strict=True
    ):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_decode_step_after_prefill_matches_transformers(tmp_path: Path) -> None:
    hf_model = make_checkpoint(tmp_path, make_hf_config("llama3_rope"))
    model, config = load_model(tmp_path)
    prompts = make_prompts(config.vocab_size)
    backend = make_backend(config, torch.float32, len(prompts))
    lens = [len(p) for p in prompts]
    run_step(model, backend, [p[:-1] for p in prompts], [n - 1 for n in lens])
    last = run_step(model, backend, [p[-1:] for p in prompts], lens)  # [num_seqs, vocab]
    expected = torch.stack([logits[-1] for logits in hf_logits(hf_model, prompts)])
    torch.testing.assert_close(last, expected, atol=1e-4, rtol=1e-4)


def test_bfloat16_logits_stay_close_to_float32(tmp_path: Path) -> None:
    hf_model = make_checkpoint(tmp_path, make_hf_config("qwen3"))
    model, config = load_model(tmp_path, dtype=torch.bfloat16)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    prompts = make_prompts(config.vocab_size)
    for ours, theirs in zip(
        prefill_logits(model, prompts), hf_logits(hf_model, prompts), strict=True
    ):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, atol=0.1, rtol=0.05)


def test_sharded_checkpoint_loads_identically(tmp_path: Path) -> None:
    hf_config = make_hf_config("qwen2")
    make_checkpoint(tmp_path / "single", hf_config)
    make_checkpoint(tmp_path / "sharded", hf_config, max_shard_size="40KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    single, _ = load_model(tmp_path / "single")
    sharded, _ = load_model(tmp_path / "sharded")
    single_state, sharded_state = single.state_dict(), sharded.state_dict()
    assert single_state.keys() == sharded_state.keys()
    for name, tensor in single_state.items():
        assert torch.equal(tensor, sharded_state[name]), name


def test_tied_model_shares_embedding_with_head(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, make_hf_config("llama_tied"))
    model, config = load_model(tmp_path)
    assert config.tie_word_embeddings
    assert model.lm_head.weight is model.embed_tokens.weight


def test_config_reads_transformers_checkpoints(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, make_hf_config("qwen3"))
    config = ModelConfig.from_hf_config(json.loads((tmp_path / "config.json").read_text()))
    assert (config.architecture, config.model_type) == ("Qwen3ForCausalLM", "qwen3")
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (4, 2, 32)
    assert (config.qk_norm, config.attention_bias, config.o_proj_bias) == (True, False, False)
    qwen2 = ModelConfig.from_hf_config(make_hf_config("qwen2").to_dict())
    assert (qwen2.attention_bias, qwen2.o_proj_bias, qwen2.head_dim) == (True, False, 16)


def hf_dict(**overrides) -> dict:
    """A minimal llama config.json dict in the pre-transformers-5 layout."""
    return {"model_type": "llama", **SMALL, "rope_theta": 500000.0, **overrides}


def test_config_reads_legacy_rope_and_eos_lists() -> None:
    config = ModelConfig.from_hf_config(
        hf_dict(
            rope_scaling={**LLAMA3_ROPE, "rope_type": None, "type": "llama3"},
            eos_token_id=[128001, 128009],
            torch_dtype="bfloat16",
        )
    )
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 16)
    assert config.eos_token_ids == (128001, 128009)
    assert config.dtype == "bfloat16"
    plain = ModelConfig.from_hf_config(hf_dict(eos_token_id=2))
    assert (plain.rope_scaling, plain.eos_token_ids, plain.dtype) == (None, (2,), "float32")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model_type": "gpt2"}, "model_type"),
        ({"architectures": ["LlamaForSequenceClassification"]}, "architectures"),
        ({"model_type": "mistral", "sliding_window": 32}, "sliding_window"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
        ({"hidden_size": None}, "hidden_size"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"eos_token_id": "</s>"}, "eos_token_id"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"torch_dtype": "int8"}, "dtype"),
    ],
)
def test_config_errors_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ModelConfig.from_hf_config(hf_dict(**overrides))


def test_mistral_without_sliding_window_is_accepted() -> None:
    config = ModelConfig.from_hf_config(hf_dict(model_type="mistral", sliding_window=None))
    assert config.architecture == "MistralForCausalLM"


def test_loader_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf_dict()))
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_model(tmp_path)


def test_load_weights_rejects_unknown_missing_and_misshapen(tmp_path: Path) -> None:
    make_checkpoint(tmp_path, make_hf_config("llama"))
    model, _ = load_model(tmp_path)
    weights = dict(model.state_dict())
    with pytest.raises(ValueError, match=r"unexpected weight 'model\.layers\.0\.bogus'"):
        model.load_weights([("model.layers.0.bogus", torch.zeros(1))])
    with pytest.raises(ValueError, match="missing weights"):
        model.load_weights([("model.norm.weight", weights["norm.weight"])])
    with pytest.raises(ValueError, match=r"q_proj\.weight' has shape \(3, 64\)"):
        model.load_weights([("model.layers.0.self_attn.q_proj.weight", torch.zeros(3, 64))])


@pytest.mark.slow
def test_default_model_converts_once_and_knows_paris(default_model_dir: Path) -> None:
    from parrotlet.engine.models.default_model import resolve_model_path
    from parrotlet.engine.tokenizer import encode_prompt, is_chat_model, load_tokenizer

    folder = default_model_dir
    assert folder.name == "SmolLM2-135M-Instruct"
    start = time.perf_counter()
    assert resolve_model_path(None) == folder
    assert time.perf_counter() - start < 0.5
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp dir left behind
    model, config = load_model(folder)
    tokenizer = load_tokenizer(folder)
    assert is_chat_model(tokenizer) and config.eos_token_ids == (tokenizer.eos_token_id,)
    prompt = torch.tensor(encode_prompt(tokenizer, "The capital of France is", chat=False))
    logits = prefill_logits(model, [prompt])[0][-1]  # [vocab]
    paris = tokenizer.encode(" Paris")
    assert len(paris) == 1 and paris[0] in logits.topk(5).indices.tolist()
    hf_model = AutoModelForCausalLM.from_pretrained(folder).eval()
    torch.testing.assert_close(logits, hf_logits(hf_model, [prompt])[0][-1], atol=1e-3, rtol=1e-3)
    chat_ids = encode_prompt(tokenizer, "hi", chat=True)
    assert tokenizer.decode(chat_ids).endswith(
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
