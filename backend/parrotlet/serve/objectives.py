"""Performance-objective deduction: from the variables the app fetched, which calls are latency-
critical, which are throughput work, and which form task groups. The executor turns the result
into engine priorities and groups (Parrot §5: objectives propagate backwards from the sinks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from parrotlet.engine.sequence import PRIORITY_CLASS
from parrotlet.graph.index import GraphIndex, Node
from parrotlet.graph.ir import Call, PerfCriterion


@dataclass(frozen=True)
class CallPlan:
    """How one demanded node should run.

    `objective` is LATENCY if the node lies on a path to a latency-fetched variable, else
    THROUGHPUT. `group` names the task group of calls that all feed one consumer (a map stage):
    they are admitted together and batched for throughput, since the consumer waits for all.
    """

    objective: PerfCriterion
    group: str | None = None


def deduce(index: GraphIndex, fetched: Mapping[str, PerfCriterion]) -> dict[str, CallPlan]:
    """The plan of every node the fetched variables depend on (nodes not needed are absent)."""
    objectives = _objectives(index, fetched)
    groups = _task_groups(index, objectives)
    return {nid: CallPlan(obj, groups.get(nid)) for nid, obj in objectives.items()}


def engine_priority(plan: CallPlan, app_order: int) -> int:
    """Engine priority (lower runs first): latency calls, then latency task groups, then
    throughput work; within a class, apps that started earlier go first."""
    ranks = {PerfCriterion.LATENCY: 0, PerfCriterion.THROUGHPUT: 2}
    rank = ranks[plan.objective] + (
        plan.group is not None and plan.objective is PerfCriterion.LATENCY
    )
    return rank * PRIORITY_CLASS + app_order


def _objectives(
    index: GraphIndex, fetched: Mapping[str, PerfCriterion]
) -> dict[str, PerfCriterion]:
    """Walk producers backwards from each sink; LATENCY wins over THROUGHPUT."""
    result: dict[str, PerfCriterion] = {}
    order = sorted(fetched.items(), key=lambda kv: kv[1] is not PerfCriterion.LATENCY)
    for var, criterion in order:
        stack = [p for p in [index.producers.get(var, "")] if p in index.nodes]
        while stack:
            nid = stack.pop()
            if nid in result:
                continue
            result[nid] = criterion
            stack.extend(_parents(index, index.nodes[nid]))
    return result


def _task_groups(index: GraphIndex, objectives: Mapping[str, PerfCriterion]) -> dict[str, str]:
    """Calls that together feed one consumer (through transforms) and are independent of each
    other form the group "group:<consumer>"; a call joins the first group that claims it."""
    groups: dict[str, str] = {}
    for consumer_id in sorted(objectives):
        if not isinstance(index.nodes[consumer_id], Call):
            continue  # a transform passes its inputs on; the call that reads it waits for them
        feeders = _feeding_calls(index, index.nodes[consumer_id])
        feeders = [f for f in feeders if f in objectives and f not in groups]
        if len(feeders) < 2 or not _independent(index, feeders):
            continue
        for f in feeders:
            groups[f] = f"group:{consumer_id}"
    return groups


def _feeding_calls(index: GraphIndex, node: Node) -> list[str]:
    """The calls whose outputs reach `node` directly or through transforms only."""
    calls: list[str] = []
    stack = list(_parents(index, node))
    seen: set[str] = set()
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        parent = index.nodes[nid]
        if isinstance(parent, Call):
            calls.append(nid)
        else:
            stack.extend(_parents(index, parent))
    return sorted(calls)


def _independent(index: GraphIndex, calls: list[str]) -> bool:
    """No call of `calls` is an ancestor of another."""
    members = set(calls)
    for nid in calls:
        stack, seen = list(_parents(index, index.nodes[nid])), set()
        while stack:
            pid = stack.pop()
            if pid in members:
                return False
            if pid not in seen:
                seen.add(pid)
                stack.extend(_parents(index, index.nodes[pid]))
    return True


def _parents(index: GraphIndex, node: Node) -> list[str]:
    producers = (index.producers.get(var, "") for var in node.inputs)
    return [p for p in producers if p in index.nodes]
