"""Engine configuration: one frozen, validated dataclass per layer (cache, scheduler, engine).

The CLI derives its flags from these; the server and benchmarks build them directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


def check_device(device: str) -> None:
    """Raise ValueError unless `device` is spelled cpu, cuda or cuda:N (whether that device
    exists is checked where torch is imported: engine.resolve_device)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV pool.

    On CUDA the pool takes `gpu_memory_utilization` of the memory left free after loading the
    model; on CPU it takes `cpu_kv_cache_bytes`. `num_blocks` overrides both (tests use it to force
    preemption).
    """

    block_size: int = 16
    cpu_kv_cache_bytes: int = 1 << 30
    gpu_memory_utilization: float = 0.85
    num_blocks: int | None = None
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.cpu_kv_cache_bytes < 1:
            raise ValueError(f"cpu_kv_cache_bytes must be >= 1, got {self.cpu_kv_cache_bytes}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching: at most `max_num_seqs` sequences and `max_num_batched_tokens` per step.

    A prompt longer than the token budget is prefilled in chunks over several steps.
    `latency_max_num_batched_tokens` (None = off) caps the tokens that less urgent sequences add
    to a step while a sequence of the most urgent priority class (latency calls) runs or is being
    admitted, so bulk prefill chunks cannot stretch its steps (its own prefill is not cut);
    without urgent work the full budget serves throughput.
    """

    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 64
    latency_max_num_batched_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}"
            )
        cap = self.latency_max_num_batched_tokens
        if cap is not None and cap < 1:
            raise ValueError(f"latency_max_num_batched_tokens must be >= 1, got {cap}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")


@dataclass(frozen=True)
class EngineConfig:
    """One engine: which model, on which device, with which attention backend.

    `model` is a local Hugging Face folder; None means the embedded default model.
    `attention_backend` "auto" picks flashinfer on CUDA when installed, else the torch reference.
    `shared_prefix_attention` attends a prefix shared by several running sequences once per step,
    for shared prefixes of at least `shared_prefix_min_tokens` tokens (below that, per-sequence
    attention is cheaper on CPU: the split-and-merge overhead outweighs the prefix read). On CUDA
    the flashinfer backend's cascade policy decides, and it is off by default (measured slower
    end to end than CUDA-graph decode over the shared blocks; see FlashInferBackend).
    `cuda_graphs` replays decode-only steps as CUDA graphs (CUDA with the flashinfer backend only;
    elsewhere it has no effect) and, on CUDA, the other steps of at most `piecewise_graph_tokens`
    tokens (0: none) as piecewise graphs: everything but attention, which runs eagerly between
    them (engine/piecewise_graphs.py; steps are padded to a multiple of 16 tokens).
    `async_scheduling` (None: on for CUDA, off for CPU) schedules and launches step N+1 before
    reading step N's tokens, so the host's work hides behind the device's; every output then
    arrives one step later, which only pays where the device computes asynchronously.
    `small_batch_linear` runs linear layers of at most 64 rows (decode steps) through parrotlet's
    weight-streaming Triton kernel on CUDA in 16-bit where triton is installed (off: cuBLAS).
    `graph_decode_attention` is the decode attention inside CUDA graphs: "flashinfer" (RoPE, two
    cache writes, paged decode), "triton" (parrotlet's kernel with RoPE and the K/V append
    fused: one launch), or "auto": per step, the Triton kernel up to the contexts where it was
    measured faster or level (`triton_paged_decode.triton_decode_wins`: 16K tokens, 8K from
    batch 64), flashinfer's beyond (flashinfer alone where triton is not installed).
    `graph_prefix_tiles` runs decode steps whose sequences share long prefixes
    (`shared_prefix_attention`; where the tiles save enough reads,
    `triton_prefix_tiles.worth_tiling`) through a graph of parrotlet's Triton kernel that reads
    each prefix once per tile of rows instead of once per sequence, where triton is installed
    (64 requests under a 5000-token prompt: 1.57x lower per-token latency on the H100).
    `programmatic_launch` launches the decode step's Triton kernels (linear layers, decode
    attention) with programmatic dependent launch on sm_90+ GPUs: each is launched during the
    tail of the kernel before it (parrotlet_kernels/programmatic_launch.py).
    `guided_jump_forward` appends the tokens a guided sequence's guide forces next (a JSON
    key, a function name) without sampling them: the next step computes them with the sampled
    token, so a guided output takes fewer steps (engine/guided_decoding.py).
    """

    model: str | None = None
    device: str = "cpu"
    dtype: str = "auto"
    attention_backend: str = "auto"
    max_model_len: int | None = None
    shared_prefix_attention: bool = True
    shared_prefix_min_tokens: int = 256
    cuda_graphs: bool = True
    piecewise_graph_tokens: int = 512
    async_scheduling: bool | None = None
    small_batch_linear: bool = True
    graph_decode_attention: str = "auto"
    graph_prefix_tiles: bool = True
    programmatic_launch: bool = True
    guided_jump_forward: bool = True
    seed: int = 0
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(
                f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}"
            )
        if self.attention_backend not in ("auto", "reference", "flashinfer"):
            raise ValueError(
                "attention_backend must be auto, reference or flashinfer, "
                f"got {self.attention_backend!r}"
            )
        if self.graph_decode_attention not in ("flashinfer", "triton", "auto"):
            raise ValueError(
                "graph_decode_attention must be flashinfer, triton or auto, "
                f"got {self.graph_decode_attention!r}"
            )
        check_device(self.device)
        if self.shared_prefix_min_tokens < 0:
            raise ValueError(
                f"shared_prefix_min_tokens must be >= 0, got {self.shared_prefix_min_tokens}"
            )
        if self.piecewise_graph_tokens < 0:
            raise ValueError(
                f"piecewise_graph_tokens must be >= 0, got {self.piecewise_graph_tokens}"
            )
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")
