"""Placement: prefix affinity vs load vs objective, the sticky rule, and the prefix index."""

from __future__ import annotations

import pytest

from parrotlet.graph.ir import PerfCriterion
from parrotlet.serve.engines import EngineDiedError
from parrotlet.serve.placement import UNPLACED, Candidate, PlacementConfig, Placer, choose
from parrotlet.serve.prefix_index import PrefixIndex

from .fake_engines import FakeEngine

CONFIG = PlacementConfig()
LATENCY, THROUGHPUT = PerfCriterion.LATENCY, PerfCriterion.THROUGHPUT
INSTRUCTION = list(range(1000, 1300))  # a 300-token shared instruction


def make_prompt(question: int, length: int = 20) -> list[int]:
    return INSTRUCTION + [question] * length


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ---- choose: the pure decision ---------------------------------------------------------------
def test_choose_prefers_the_engine_holding_the_prefix_over_a_lighter_one() -> None:
    candidates = [Candidate(load=0, match=0), Candidate(load=3, match=288)]
    assert choose(candidates, 320, latency=False, config=CONFIG) == 1


def test_choose_ignores_a_prefix_below_the_affinity_ratio() -> None:
    candidates = [Candidate(load=0, match=0), Candidate(load=3, match=144)]
    assert choose(candidates, 320, latency=False, config=CONFIG) == 0


def test_choose_yields_to_load_only_past_both_balance_thresholds() -> None:
    def pick(held_load: float, other_load: float) -> int:
        candidates = [Candidate(other_load, 0), Candidate(held_load, 288)]
        return choose(candidates, 320, latency=False, config=CONFIG)

    assert pick(20, 2) == 0  # 18 more requests (> 16) and 10x the load
    assert pick(18, 2) == 1  # 16 more: within balance_abs
    assert pick(40, 21) == 1  # 19 more, but less than 2x


def test_choose_is_stricter_for_latency_critical_calls() -> None:
    candidates = [Candidate(load=2, match=0), Candidate(load=7, match=288)]
    assert choose(candidates, 320, latency=True, config=CONFIG) == 0
    assert choose(candidates, 320, latency=False, config=CONFIG) == 1


def test_choose_breaks_ties_by_match_then_order() -> None:
    assert choose([Candidate(1, 0), Candidate(1, 0)], 320, False, CONFIG) == 0
    assert choose([Candidate(1, 0), Candidate(1, 16)], 320, False, CONFIG) == 1
    assert choose([Candidate(2, 288), Candidate(1, 288)], 320, False, CONFIG) == 1


def test_choose_without_affinity_is_least_load() -> None:
    off = PlacementConfig(prefix_affinity=False)
    assert choose([Candidate(1, 0), Candidate(3, 288)], 320, False, off) == 0


def test_placement_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="min_affinity_ratio must be in"):
        PlacementConfig(min_affinity_ratio=0)
    with pytest.raises(ValueError, match="balance_abs must be >= 0"):
        PlacementConfig(balance_abs=-1)


# ---- Placer: loads, the sticky rule, liveness ------------------------------------------------
def test_calls_sharing_a_prefix_stick_to_one_engine_before_anything_is_cached() -> None:
    engines = [FakeEngine("e0"), FakeEngine("e1")]
    placer = Placer(engines, clock=FakeClock())

    first = [placer.place(make_prompt(q), "t", THROUGHPUT).name for q in (1, 2, 3, 4)]
    unrelated = placer.place(list(range(5000, 5320)), "t", THROUGHPUT).name

    assert first == ["e0", "e0", "e0", "e0"]
    assert unrelated == "e1"  # e0 carries the 4 recent placements


def test_unrelated_calls_spread_by_recent_placements() -> None:
    engines = [FakeEngine("e0"), FakeEngine("e1")]
    placer = Placer(engines, clock=FakeClock())
    names = [placer.place([q] * 40, "t", THROUGHPUT).name for q in range(6)]
    assert names == ["e0", "e1", "e0", "e1", "e0", "e1"]


def test_the_engine_with_the_cached_prefix_wins_and_stickiness_expires() -> None:
    clock = FakeClock()
    engines = [FakeEngine("e0"), FakeEngine("e1", running=1, cached=make_prompt(9))]
    placer = Placer(engines, clock=clock)

    assert placer.place(make_prompt(1), "t", THROUGHPUT).name == "e1"  # cached there
    engines[1].cached = ()
    assert placer.place(make_prompt(2), "t", THROUGHPUT).name == "e1"  # sent there (sticky)
    clock.now = CONFIG.sticky_ttl_s + 1
    assert placer.place(make_prompt(3), "t", THROUGHPUT).name == "e0"  # forgotten: less load


def test_sticky_prefixes_do_not_cross_tenants() -> None:
    engines = [FakeEngine("e0"), FakeEngine("e1")]
    placer = Placer(engines, clock=FakeClock())
    assert placer.place(make_prompt(1), "tenant-a", THROUGHPUT).name == "e0"
    assert placer.place(make_prompt(1), "tenant-b", THROUGHPUT).name == "e1"


def test_queued_work_weighs_double_for_latency_critical_calls() -> None:
    engines = [FakeEngine("e0", waiting=3), FakeEngine("e1", running=4)]
    assert Placer(engines).place([7] * 40, "t", THROUGHPUT).name == "e0"  # load 3 vs 4
    assert Placer(engines).place([7] * 40, "t", LATENCY).name == "e1"  # load 6 vs 4


@pytest.mark.anyio
async def test_dead_engines_are_skipped_and_none_alive_is_unplaced() -> None:
    engines = [FakeEngine("e0"), FakeEngine("e1", running=5)]
    engines[0].alive = False
    placer = Placer(engines)
    assert placer.place([7] * 40, "t", THROUGHPUT).name == "e1"

    engines[1].alive = False
    engine = placer.place([7] * 40, "t", THROUGHPUT)
    assert engine is UNPLACED and not engine.alive
    with pytest.raises(EngineDiedError, match="no live engine"):
        async for _ in engine.generate([1], None, priority=0, cache_namespace="t"):  # type: ignore[arg-type]
            pass


# ---- PrefixIndex -----------------------------------------------------------------------------
def test_prefix_index_matches_whole_blocks_per_namespace() -> None:
    index = PrefixIndex(16)
    index.record(list(range(40)), "a")

    assert len(index) == 2
    assert index.match_len(list(range(40)), "a") == 32
    assert index.match_len([*range(20), 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99], "a") == 16
    assert index.match_len(list(range(40)), "b") == 0
    assert index.match_len([99, *range(1, 40)], "a") == 0


def test_prefix_index_evicts_leaves_first_and_expires() -> None:
    clock = FakeClock()
    index = PrefixIndex(16, ttl_s=5.0, max_blocks=2, clock=clock)
    index.record(list(range(48)), "a")
    assert index.match_len(list(range(48)), "a") == 32  # the third block (a leaf) went first

    clock.now = 6.0
    assert index.match_len(list(range(48)), "a") == 0
    assert len(index) == 0
