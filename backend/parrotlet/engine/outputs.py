"""RequestOutput: what the engine reports for a request after a step (new tokens, text, finish)."""

from __future__ import annotations

from dataclasses import dataclass

from parrotlet.engine.logprobs import TokenLogprob
from parrotlet.engine.sequence import FinishReason


@dataclass(frozen=True)
class RequestOutput:
    """A request's progress after one step.

    `new_token_ids` / `text_delta` are what this step added (a streamed client concatenates
    them); `token_ids` / `text` are the whole output so far. `new_logprobs`: the new tokens'
    log-probabilities, one each, when the request asked for them (SamplingParams.logprobs).
    """

    request_id: str
    new_token_ids: tuple[int, ...]
    text_delta: str
    token_ids: tuple[int, ...]
    text: str
    finished: bool
    finish_reason: FinishReason | None
    num_prompt_tokens: int
    num_cached_tokens: int
    error: str | None = None
    new_logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class EngineStats:
    """Counters for /metrics and for tests that assert how much work the engine did."""

    num_waiting: int
    num_running: int
    num_blocks: int
    num_used_blocks: int
    block_size: int
    num_computed_tokens: int  # tokens run through the model (prompt chunks + decodes)
    num_prompt_tokens: int  # prompt tokens of admitted requests
    num_cached_prompt_tokens: int  # of those, found in the prefix cache
    num_preemptions: int
    num_steps: int
    num_graph_steps: int = 0  # steps that replayed a CUDA graph
    num_tiled_steps: int = 0  # of those, graphs reading shared prefixes once per tile
    num_piecewise_steps: int = 0  # steps that replayed piecewise graphs around attention
    step_us: int = 0  # wall time inside step(): host work plus device_wait_us
    device_wait_us: int = 0  # of it, waiting for the device's tokens (0: the host is the bound)

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def kv_usage(self) -> float:
        return self.num_used_blocks / self.num_blocks

    @property
    def prefix_hit_rate(self) -> float:
        return self.num_cached_prompt_tokens / max(1, self.num_prompt_tokens)
