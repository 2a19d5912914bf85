"""Scheduler: continuous batching under a per-step token budget, by priority, with preemption.

No prefill/decode phases: each step every scheduled sequence computes a chunk of its uncomputed
tokens (a decode is a chunk of one). Running sequences go first, then waiting ones are admitted;
a waiting sequence of a more urgent class is admitted before running ones of a less urgent class.
While latency work (priority class 0) runs, the tokens less urgent work adds to a step may be
capped (latency vs throughput). When KV blocks run out, the lowest-priority running sequence is
preempted by recompute.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from parrotlet.engine.block_manager import BlockManager
from parrotlet.engine.config import SchedulerConfig
from parrotlet.engine.sequence import FinishReason, Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    """What one step computes: `num_new_tokens[i]` tokens of `seqs[i]`."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    admitted: list[Sequence] = field(default_factory=list)  # first admissions, for accounting
    preempted: list[Sequence] = field(default_factory=list)
    failed: list[Sequence] = field(default_factory=list)
    num_tokens: int = 0  # sum(num_new_tokens), kept as sequences are added
    num_bulk_tokens: int = 0  # of those, the tokens of sequences less urgent than class 0

    def add(self, seq: Sequence, num_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_tokens)
        self.num_tokens += num_tokens
        if seq.priority_class > 0:
            self.num_bulk_tokens += num_tokens


class Scheduler:
    """Orders sequences by (priority, arrival) and fits each step into the budget and the KV pool.

    Invariants: every sequence is in exactly one of waiting / running until it finishes; a
    sequence in `running` holds blocks for all its computed tokens; nothing is dropped silently —
    a request the pool can never hold fails with FinishReason.ERROR.
    """

    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.blocks = block_manager
        self.waiting: list[tuple[tuple[int, int], Sequence]] = []  # heap by sort_key
        self.running: list[Sequence] = []
        self._seat_preemptions = 0  # this step's preemptions that freed seats, not blocks
        self._latency_step = False  # the latency cap binds this step

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        heapq.heappush(self.waiting, (seq.sort_key(), seq))

    def abort(self, seq: Sequence) -> None:
        """Remove `seq` wherever it is and free its blocks."""
        self.finish(seq, FinishReason.ABORT)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Take `seq` out of running or waiting (a preempted sequence may finish when its last
        pending token is read) and free its blocks."""
        if seq.status is SequenceStatus.RUNNING and seq in self.running:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting = [(k, s) for k, s in self.waiting if s is not seq]
            heapq.heapify(self.waiting)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        self.blocks.free(seq)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        self._yield_seats_to_urgent(batch)
        self._latency_step = self._has_latency_work()
        self._schedule_running(batch)
        if len(batch.preempted) == self._seat_preemptions:  # no memory pressure this step
            self._admit_waiting(batch)
        return batch

    def _has_latency_work(self) -> bool:
        """Whether the latency cap binds this step: class-0 work runs or heads the queue."""
        if self.config.latency_max_num_batched_tokens is None:
            return False
        urgent = any(s.priority_class == 0 for s in self.running)
        return urgent or bool(self.waiting and self.waiting[0][1].priority_class == 0)

    def room(self, seq: Sequence, batch: ScheduledBatch) -> int:
        """Tokens `seq` may add to `batch`: what is left of the budget; while latency work
        runs, less urgent sequences together add at most the latency cap (the latency work's
        own prefill is never throttled)."""
        room = self.config.max_num_batched_tokens - batch.num_tokens
        cap = self.config.latency_max_num_batched_tokens
        if self._latency_step and cap is not None and seq.priority_class > 0:
            room = min(room, cap - batch.num_bulk_tokens)
        return room

    # ---- steps of schedule() -------------------------------------------------------------
    def _yield_seats_to_urgent(self, batch: ScheduledBatch) -> None:
        """With every seat taken, preempt the least urgent running sequence for a waiting one
        of a more urgent priority class (a latency call is never stuck behind bulk work)."""
        while self.waiting and len(self.running) >= self.config.max_num_seqs:
            head = self.waiting[0][1]
            worst = max(self.running, key=Sequence.sort_key)
            if worst.priority_class <= head.priority_class:
                break
            self._preempt(worst, batch)
        self._seat_preemptions = len(batch.preempted)

    def _schedule_running(self, batch: ScheduledBatch) -> None:
        """Give each running sequence its next chunk; preempt from the back when blocks run out.

        Before the first running sequence of a class less urgent than the waiting head, the
        waiting sequences of more urgent classes are admitted (a chat never waits for the whole
        prefill of bulk work that started before it).
        """
        self.running.sort(key=Sequence.sort_key)
        queue = [s for s in self.running if s.num_uncomputed_tokens and not s.awaits_finish]
        jumped = False
        while queue:
            if not jumped and self._waiting_outranks(queue[0], batch):
                jumped = True
                self._admit_waiting(batch, below=queue[0].priority_class)
                continue
            budget = self.room(queue[0], batch)
            if budget <= 0:
                break  # the rest are no more urgent: no room for them either
            seq = queue.pop(0)
            num_new = min(seq.num_uncomputed_tokens, budget)
            while not self.blocks.allocate(seq, seq.num_computed_tokens + num_new):
                victim = queue.pop() if queue else seq
                self._preempt(victim, batch)
                if victim is seq:
                    break
            else:
                batch.add(seq, num_new)

    def _waiting_outranks(self, seq: Sequence, batch: ScheduledBatch) -> bool:
        """The waiting head is of a more urgent class than running `seq` and may be admitted."""
        return (
            bool(self.waiting)
            and self.waiting[0][1].priority_class < seq.priority_class
            and len(batch.preempted) == self._seat_preemptions
        )

    def _admit_waiting(self, batch: ScheduledBatch, below: int | None = None) -> None:
        """Admit waiting sequences in priority order while the budget, seq cap and pool allow;
        with `below`, only those of a priority class more urgent than `below`.

        The members of a task group (same `group`) are admitted together or not at all, unless
        nothing else runs (then the head goes alone, so the engine never idles).
        """
        while self.waiting:
            seq = self.waiting[0][1]
            budget = self.room(seq, batch)
            if budget <= 0 or len(self.running) >= self.config.max_num_seqs:
                break
            if below is not None and seq.priority_class >= below:
                break
            if seq.num_pending:  # preempted while its last token was being sampled: next step
                break
            if seq.group is not None and self._admit_group(seq.group, batch, budget):
                continue
            if seq.group is not None and (self.running or batch.seqs):
                break  # wait until the whole group fits
            if not self._start(seq, budget, batch):
                break
            heapq.heappop(self.waiting)
            self._run(seq)

    def _admit_group(self, group: str, batch: ScheduledBatch, budget: int) -> bool:
        """Admit every waiting member of `group` if the seq cap and the pool hold them all.

        A group too large for the cap or the whole pool can never run at once: it is admitted
        as far as there is room, the rest following one by one as seats free (as do the rest of
        any group that already has members running: waiting for them all to fit would only idle
        seats).
        """
        members = sorted((s for _, s in self.waiting if s.group == group), key=Sequence.sort_key)
        if any(s.num_pending for s in members):
            return False
        slots = self.config.max_num_seqs - len(self.running)
        if any(s.group == group for s in self.running):  # started: no prefix matching needed
            return self._admit_some(members, slots, batch, budget)
        cached = [self.blocks.match_prefix(s.token_ids[:-1], s.cache_namespace) for s in members]
        needed = sum(
            -(-s.num_tokens // self.blocks.block_size) - len(c)
            for s, c in zip(members, cached, strict=True)
        )
        if len(members) > self.config.max_num_seqs or needed > self.blocks.num_blocks:
            return self._admit_some(members, slots, batch, budget)
        if len(members) > slots or needed > self.blocks.num_free_blocks:
            return False
        self.waiting = [(k, s) for k, s in self.waiting if s.group != group]
        heapq.heapify(self.waiting)
        for seq, blocks in zip(members, cached, strict=True):
            self.blocks.acquire_prefix(seq, blocks)
            self._note_admission(seq, batch)
            self._run(seq)
            num_new = min(seq.num_uncomputed_tokens, budget)
            if num_new > 0 and self.blocks.allocate(seq, seq.num_computed_tokens + num_new):
                batch.add(seq, num_new)
                budget -= num_new
        return True

    def _admit_some(
        self, members: list[Sequence], slots: int, batch: ScheduledBatch, budget: int
    ) -> bool:
        """Admit members one by one while there is room; True if any was admitted."""
        admitted = 0
        for seq in members[:slots]:
            if budget <= 0 or not self._start(seq, budget, batch):
                break
            self.waiting = [(k, s) for k, s in self.waiting if s is not seq]
            self._run(seq)
            budget -= batch.num_new_tokens[-1]
            admitted += 1
        heapq.heapify(self.waiting)
        return admitted > 0

    def _run(self, seq: Sequence) -> None:
        self.running.append(seq)
        seq.status = SequenceStatus.RUNNING

    def _note_admission(self, seq: Sequence, batch: ScheduledBatch) -> None:
        if seq.num_preemptions == 0:
            seq.num_cached_tokens = seq.num_computed_tokens
            batch.admitted.append(seq)

    def _start(self, seq: Sequence, budget: int, batch: ScheduledBatch) -> bool:
        """Reuse the cached prefix of `seq` and allocate its first chunk; False if it must wait."""
        # The last token is always computed, so its logits exist to sample from.
        cached = self.blocks.match_prefix(seq.token_ids[: seq.num_tokens - 1], seq.cache_namespace)
        self.blocks.acquire_prefix(seq, cached)
        num_new = min(seq.num_uncomputed_tokens, budget)
        if self.blocks.allocate(seq, seq.num_computed_tokens + num_new):
            batch.add(seq, num_new)
            self._note_admission(seq, batch)
            return True
        self.blocks.free(seq)
        seq.num_computed_tokens = 0
        if not self.running and not batch.seqs:
            self._fail_unfittable(seq, batch)
        return False

    def _fail_unfittable(self, seq: Sequence, batch: ScheduledBatch) -> None:
        """Nothing else runs and `seq` still does not fit: it never will (pins hold the rest)."""
        heapq.heappop(self.waiting)
        self.finish(seq, FinishReason.ERROR)
        batch.failed.append(seq)

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        """Preemption by recompute: drop the KV, keep the tokens, queue it again."""
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        batch.preempted.append(seq)
        self.add(seq)
