"""Sequence: the engine's unit of execution for one request (one call of an application graph).

The scheduler moves it between waiting and running; the BlockManager gives it KV blocks; the
ModelRunner computes its tokens `[num_computed_tokens, num_tokens)` a chunk per step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from parrotlet.engine.sampling_params import SamplingParams

PENDING = -1
"""The id held in `token_ids` by a token that a launched step samples but the host has not read
yet (async scheduling); the next step takes its input from the device instead."""

PRIORITY_CLASS = 1_000_000_000
"""Priorities are ordered as ints; `priority // PRIORITY_CLASS` is the class. A waiting sequence
of a more urgent class may take the seat of a running one (preemption); within a class the
order only decides who is admitted first."""


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(enum.StrEnum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens reached
    ABORT = "abort"  # aborted by the caller
    ERROR = "error"  # could not run (e.g. the KV pool cannot hold it)


@dataclass(eq=False)
class Sequence:
    """One request's tokens and progress.

    `token_ids` is the prompt followed by the generated tokens, of which the last `num_pending`
    are PENDING: sampled by a launched step whose result the host has not read yet (at most the
    last two with async scheduling; none otherwise). After a preemption by recompute,
    `num_computed_tokens` drops to 0 and the generated tokens are recomputed like prompt tokens;
    a new token is sampled only in a step where the sequence catches up with `num_tokens`.
    `max_len` (None: no limit) is the length at which it stops for length.
    """

    request_id: str
    token_ids: list[int]
    params: SamplingParams
    arrival: int
    priority: int = 0  # lower runs first; the app layer sets it from the call's objective
    cache_namespace: str = ""  # prefix sharing happens only within one namespace (tenant)
    group: str | None = None  # a task group: its waiting members are admitted together
    keep_prefix: bool = False  # a pin: keep the prompt's full blocks cached after finishing
    num_prompt_tokens: int = 0
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache at first admission
    block_ids: list[int] = field(default_factory=list)
    num_cached_blocks: int = 0  # leading blocks already recorded in the prefix tree
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    num_pending: int = 0
    max_len: int | None = None
    matcher: Any = None  # guided decoding: the llguidance matcher of params.guide

    def __post_init__(self) -> None:
        self.num_prompt_tokens = len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_known_tokens(self) -> int:
        """Tokens whose ids the host knows: all but the pending ones."""
        return len(self.token_ids) - self.num_pending

    @property
    def num_output_tokens(self) -> int:
        """Generated tokens the host knows."""
        return self.num_known_tokens - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens : self.num_known_tokens]

    @property
    def awaits_finish(self) -> bool:
        """A pending token takes it to `max_len`: it finishes once that token is read (the
        scheduler gives it no further step)."""
        return self.num_pending > 0 and self.max_len is not None and self.num_tokens >= self.max_len

    def add_pending(self) -> None:
        """A launched step samples this sequence's next token; its id comes later."""
        self.token_ids.append(PENDING)
        self.num_pending += 1

    def resolve_pending(self, token: int) -> None:
        """The oldest pending token's id has arrived."""
        assert self.num_pending > 0, f"{self.request_id}: no pending token"
        self.token_ids[self.num_known_tokens] = token
        self.num_pending -= 1

    def drop_pending(self) -> None:
        """Forget tokens sampled past the finish (their steps ran ahead of the stop)."""
        del self.token_ids[self.num_known_tokens :]
        self.num_pending = 0

    @property
    def needs_known_tokens(self) -> bool:
        """Its next logits depend on its tokens so far as the host knows them (a guide's
        matcher): the step that samples one must be read before the next step launches.
        Penalties need not: their counts are kept on the device (penalties.TokenCounts)."""
        return self.matcher is not None

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def priority_class(self) -> int:
        return self.priority // PRIORITY_CLASS

    def sort_key(self) -> tuple[int, int]:
        """Scheduling order: priority first, then arrival."""
        return (self.priority, self.arrival)
