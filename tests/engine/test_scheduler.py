"""Scheduler: token budget, chunked prefill, priorities, preemption by recompute (no model)."""

from __future__ import annotations

import itertools

from parrotlet.engine.block_manager import BlockManager
from parrotlet.engine.config import SchedulerConfig
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.engine.scheduler import Scheduler
from parrotlet.engine.sequence import FinishReason, Sequence, SequenceStatus

_arrivals = itertools.count()


def make_scheduler(num_blocks=64, block_size=4, budget=64, max_seqs=8) -> Scheduler:
    return Scheduler(
        SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=max_seqs),
        BlockManager(num_blocks, block_size),
    )


def make_seq(rid: str, num_tokens: int, priority: int = 0, first: int = 0) -> Sequence:
    tokens = list(range(first, first + num_tokens))
    return Sequence(rid, tokens, SamplingParams(), next(_arrivals), priority)


def complete_step(sched: Scheduler, batch, new_token: int = 1000) -> None:
    """What the engine does after running a batch: advance, cache blocks, append a token."""
    for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
        seq.num_computed_tokens += n
        sched.blocks.cache_full_blocks(seq)
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(new_token)


def scheduled(batch) -> list[tuple[str, int]]:
    return [(s.request_id, n) for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True)]


def test_token_budget_chunks_a_long_prefill():
    sched = make_scheduler(budget=16)
    sched.add(make_seq("a", 40))
    steps = []
    for _ in range(4):
        batch = sched.schedule()
        steps.append(scheduled(batch))
        complete_step(sched, batch)
    assert steps == [[("a", 16)], [("a", 16)], [("a", 8)], [("a", 1)]]


def test_decodes_go_first_and_prefill_takes_the_rest_of_the_budget():
    sched = make_scheduler(budget=16)
    sched.add(make_seq("a", 4))
    complete_step(sched, sched.schedule())
    sched.add(make_seq("b", 30))
    batch = sched.schedule()
    assert scheduled(batch) == [("a", 1), ("b", 15)]


def test_priority_orders_admission():
    sched = make_scheduler(budget=8)
    sched.add(make_seq("throughput", 8, priority=1))
    sched.add(make_seq("latency", 8, priority=0))
    assert scheduled(sched.schedule()) == [("latency", 8)]


def test_max_num_seqs_caps_the_running_set():
    sched = make_scheduler(max_seqs=2)
    for rid in "abc":
        sched.add(make_seq(rid, 4))
    batch = sched.schedule()
    assert [s.request_id for s in batch.seqs] == ["a", "b"]
    assert sched.num_waiting == 1


def test_prefix_hit_skips_cached_tokens():
    sched = make_scheduler(budget=64, block_size=4)
    sched.add(make_seq("a", 10))
    complete_step(sched, sched.schedule())
    sched.add(make_seq("b", 11))  # same first 10 tokens: blocks [0..3], [4..7] are cached
    batch = sched.schedule()
    assert scheduled(batch) == [("a", 1), ("b", 3)]
    b = batch.seqs[1]
    assert b.num_cached_tokens == 8
    assert b.block_ids[:2] == batch.seqs[0].block_ids[:2]


def test_preemption_by_recompute_evicts_the_lowest_priority_running_sequence():
    # 6 blocks of 4 tokens. a (priority 0) and b (priority 1) each take 3 blocks for 12 tokens.
    sched = make_scheduler(num_blocks=6, block_size=4, budget=64)
    a, b = make_seq("a", 12, priority=0), make_seq("b", 12, priority=1, first=100)
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    assert scheduled(batch) == [("a", 12), ("b", 12)]
    complete_step(sched, batch)
    # Both need a 4th block for their 13th token; only `a` gets it, `b` is preempted.
    batch = sched.schedule()
    assert scheduled(batch) == [("a", 1)]
    assert batch.preempted == [b]
    assert b.status is SequenceStatus.WAITING
    assert b.num_computed_tokens == 0 and b.block_ids == []
    assert b.token_ids[-1] == 1000  # generated tokens are kept and will be recomputed
    assert b.num_preemptions == 1


def test_a_request_that_can_never_fit_fails_instead_of_hanging():
    sched = make_scheduler(num_blocks=2, block_size=4)
    seq = make_seq("big", 12)
    sched.add(seq)
    batch = sched.schedule()
    assert batch.seqs == [] and batch.failed == [seq]
    assert seq.finish_reason is FinishReason.ERROR
    assert not sched.has_unfinished()


def test_abort_frees_blocks():
    sched = make_scheduler(num_blocks=8, block_size=4)
    seq = make_seq("a", 10)
    sched.add(seq)
    complete_step(sched, sched.schedule())
    sched.abort(seq)
    assert seq.finish_reason is FinishReason.ABORT
    assert sched.blocks.num_free_blocks == 8
    assert not sched.has_unfinished()


def make_group_seq(rid: str, num_tokens: int, group: str, priority: int = 1) -> Sequence:
    seq = make_seq(rid, num_tokens, priority=priority, first=100 * len(rid))
    seq.group = group
    return seq


def test_latency_call_overtakes_queued_throughput_work():
    sched = make_scheduler(budget=16, max_seqs=2)
    for i, rid in enumerate(("t1", "t2", "t3")):
        sched.add(make_seq(rid, 8, priority=2, first=100 * i))
    complete_step(sched, sched.schedule())  # t1 and t2 run; t3 waits
    sched.add(make_seq("chat", 4, priority=0, first=500))
    sched.running[0].token_ids.append(1)  # keep both running sequences busy
    batch = sched.schedule()
    assert scheduled(batch) == [("t1", 2), ("t2", 1)]
    for seq in list(sched.running):
        sched.finish(seq, FinishReason.STOP)
    assert scheduled(sched.schedule()) == [("chat", 4), ("t3", 8)]


def test_task_group_is_admitted_together_or_not_at_all():
    # 10 blocks of 4 tokens; a running sequence holds 3. The group needs 3 x 3 = 9 blocks.
    sched = make_scheduler(num_blocks=10, block_size=4, budget=64)
    sched.add(make_seq("solo", 12, priority=0))
    complete_step(sched, sched.schedule())
    for rid in ("m1", "m2", "m3"):
        sched.add(make_group_seq(rid, 12, "map"))
    sched.add(make_seq("later", 4, priority=1, first=900))
    batch = sched.schedule()
    assert scheduled(batch) == [("solo", 1)]  # the group does not fit: nobody jumps it
    assert [s.request_id for _, s in sorted(sched.waiting)] == ["m1", "m2", "m3", "later"]
    sched.finish(sched.running[0], FinishReason.STOP)
    batch = sched.schedule()
    assert scheduled(batch) == [("m1", 12), ("m2", 12), ("m3", 12), ("later", 4)]


def test_group_members_beyond_the_budget_run_next_step():
    sched = make_scheduler(budget=20)
    for rid in ("m1", "m2", "m3"):
        sched.add(make_group_seq(rid, 8, "map"))
    batch = sched.schedule()
    assert scheduled(batch) == [("m1", 8), ("m2", 8), ("m3", 4)]
    complete_step(sched, batch)
    assert scheduled(sched.schedule()) == [("m1", 1), ("m2", 1), ("m3", 4)]


def test_a_group_larger_than_the_seq_cap_is_admitted_as_far_as_it_fits():
    sched = make_scheduler(budget=64, max_seqs=2)
    for rid in ("m1", "m2", "m3"):
        sched.add(make_group_seq(rid, 4, "map"))
    assert scheduled(sched.schedule()) == [("m1", 4), ("m2", 4)]
    assert [s.request_id for _, s in sched.waiting] == ["m3"]


def test_the_rest_of_a_group_too_large_for_the_cap_takes_each_seat_that_frees():
    sched = make_scheduler(budget=64, max_seqs=4)
    for rid in ("m1", "m2", "m3", "m4", "m5", "m6"):
        sched.add(make_group_seq(rid, 4, "map"))
    batch = sched.schedule()
    assert scheduled(batch) == [("m1", 4), ("m2", 4), ("m3", 4), ("m4", 4)]
    complete_step(sched, batch)
    sched.finish(sched.running[0], FinishReason.STOP)  # one seat frees; m5, m6 still wait
    assert scheduled(sched.schedule()) == [("m2", 1), ("m3", 1), ("m4", 1), ("m5", 4)]
    assert [s.request_id for _, s in sched.waiting] == ["m6"]


def test_a_more_urgent_class_takes_the_seat_of_bulk_work():
    from parrotlet.engine.sequence import PRIORITY_CLASS

    sched = make_scheduler(budget=64, max_seqs=2)
    bulk = [make_seq(f"b{i}", 8, priority=2 * PRIORITY_CLASS + i, first=100 * i) for i in (1, 2)]
    for seq in bulk:
        sched.add(seq)
    complete_step(sched, sched.schedule())
    sched.add(make_seq("newer-app-bulk", 4, priority=2 * PRIORITY_CLASS, first=700))
    sched.add(make_seq("chat", 4, priority=5, first=500))
    batch = sched.schedule()
    assert batch.preempted == [bulk[1]]  # the least urgent running sequence gives way
    assert scheduled(batch) == [("chat", 4), ("b1", 1)]  # admitted before bulk chunks
    assert [s.request_id for _, s in sorted(sched.waiting)] == ["newer-app-bulk", "b2"]


def make_capped_scheduler(cap: int | None, budget: int = 2048, num_blocks: int = 256) -> Scheduler:
    config = SchedulerConfig(max_num_batched_tokens=budget, latency_max_num_batched_tokens=cap)
    return Scheduler(config, BlockManager(num_blocks, block_size=16))


def test_latency_cap_bounds_bulk_tokens_only_while_urgent_work_runs():
    from parrotlet.engine.sequence import PRIORITY_CLASS

    sched = make_capped_scheduler(cap=256)
    sched.add(make_seq("bulk", 4000, priority=2 * PRIORITY_CLASS))
    batch = sched.schedule()
    assert scheduled(batch) == [("bulk", 2048)]  # no urgent work: the full budget
    complete_step(sched, batch)
    chat = make_seq("chat", 600, priority=0, first=5000)
    sched.add(chat)  # class 0 heads the waiting queue: the cap binds from this step
    batch = sched.schedule()
    assert scheduled(batch) == [("chat", 600), ("bulk", 256)]  # the chat's prefill is not cut
    complete_step(sched, batch)
    batch = sched.schedule()
    assert scheduled(batch) == [("chat", 1), ("bulk", 256)]
    complete_step(sched, batch)
    sched.finish(chat, FinishReason.STOP)
    assert scheduled(sched.schedule()) == [("bulk", 4000 - 2048 - 256 - 256)]


def test_latency_cap_ignores_less_urgent_classes_and_never_raises_the_budget():
    from parrotlet.engine.sequence import PRIORITY_CLASS

    sched = make_capped_scheduler(cap=256)
    sched.add(make_seq("latency-group", 1000, priority=PRIORITY_CLASS))  # class 1
    assert scheduled(sched.schedule()) == [("latency-group", 1000)]
    loose = make_capped_scheduler(cap=4096, budget=512)
    loose.add(make_seq("chat", 1000, priority=0))
    assert scheduled(loose.schedule()) == [("chat", 512)]


def test_an_urgent_arrival_is_admitted_before_running_bulk_prefill():
    from parrotlet.engine.sequence import PRIORITY_CLASS

    sched = make_capped_scheduler(cap=None, num_blocks=512)
    sched.add(make_seq("bulk", 5000, priority=2 * PRIORITY_CLASS))
    complete_step(sched, sched.schedule())
    sched.add(make_seq("chat", 10, priority=0, first=9000))
    sched.add(make_seq("more-bulk", 10, priority=2 * PRIORITY_CLASS + 1, first=8000))
    batch = sched.schedule()
    assert scheduled(batch) == [("chat", 10), ("bulk", 2038)]  # no cap: the full budget
    assert [s.request_id for _, s in sched.waiting] == ["more-bulk"]


def test_latency_cap_must_be_positive():
    import pytest

    with pytest.raises(ValueError, match="latency_max_num_batched_tokens must be >= 1, got 0"):
        SchedulerConfig(latency_max_num_batched_tokens=0)


def launch_step(batch) -> None:
    """What the async engine does when it launches a batch: advance, mark sampled tokens
    pending (their ids are read a step later)."""
    for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
        seq.num_computed_tokens += n
        if seq.num_computed_tokens == seq.num_tokens:
            seq.add_pending()


def test_pending_tokens_are_scheduled_but_never_past_max_len():
    sched = make_scheduler()
    a, b = make_seq("a", 6), make_seq("b", 6)
    a.max_len, b.max_len = 8, 7  # a may generate 2 tokens, b 1
    sched.add(a)
    sched.add(b)
    launch_step(first := sched.schedule())
    second = sched.schedule()  # both pending: a computes its pending token, b awaits finish

    assert scheduled(first) == [("a", 6), ("b", 6)]
    assert scheduled(second) == [("a", 1)]
    assert (a.num_known_tokens, a.num_tokens, b.awaits_finish) == (6, 7, True)
    launch_step(second)
    assert a.num_pending == 2 and a.awaits_finish and scheduled(sched.schedule()) == []


def test_a_preempted_sequence_with_a_pending_token_waits_for_its_id():
    sched = make_scheduler(max_seqs=1)
    bulk = make_seq("bulk", 5, priority=2_000_000_000)
    sched.add(bulk)
    launch_step(sched.schedule())  # bulk's first token is pending
    sched.add(make_seq("chat", 3))
    batch = sched.schedule()  # chat takes bulk's seat
    assert scheduled(batch) == [("chat", 3)] and batch.preempted == [bulk]
    launch_step(batch)
    sched.finish(batch.seqs[0], FinishReason.STOP)

    assert scheduled(sched.schedule()) == []  # bulk's pending id is not known yet
    bulk.resolve_pending(77)
    assert scheduled(sched.schedule()) == [("bulk", 6)]
    assert bulk.token_ids[-1] == 77
