"""Prefix sharing across calls on the real default model: a common instruction is computed once
per tenant (exact engine token counts), never shared across tenants."""

from __future__ import annotations

import pytest

from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.graph.ir import Call, Graph, Input, Output, Text, Variable
from parrotlet.serve.config import ServeConfig
from parrotlet.serve.prefix_sharing import find_shares

pytestmark = pytest.mark.anyio

PARAMS = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
QUESTIONS = ["Who keeps the light?", "When was it built?", "What is the lens?", "Who visits?"]


def make_instruction(nonce: str) -> str:
    rules = " ".join(
        f"Rule {i}: answer briefly and politely, using plain words." for i in range(40)
    )
    return f"[{nonce}] You are a careful assistant for a lighthouse museum. {rules}\n"


def make_graph(instruction: str) -> Graph:
    calls = tuple(
        Call(f"c{i}", (Text(instruction), Input(f"q{i}"), Output(f"a{i}", PARAMS)), chat=False)
        for i in range(len(QUESTIONS))
    )
    return Graph(tuple(Variable(f"q{i}", q) for i, q in enumerate(QUESTIONS)), calls)


async def run_app(core, tenant: str, instruction: str) -> list[str]:
    sid = await core.create_session(tenant)
    await core.submit(tenant, sid, make_graph(instruction), eager=True)
    return [(await core.get_variable(tenant, sid, f"a{i}")).value for i in range(len(QUESTIONS))]


def prompt_lengths(core, instruction: str) -> tuple[list[int], int]:
    asm = core.assembler
    lengths = [len(asm.encode(instruction)) + len(asm.encode(q)) for q in QUESTIONS]
    shared = len(asm.encode(instruction)) // 16 * 16
    return lengths, shared


def engine_delta(core, before) -> tuple[int, int]:
    after = core.stats().engines[0]
    return (
        after.num_computed_tokens - before.num_computed_tokens,
        after.num_cached_prompt_tokens - before.num_cached_prompt_tokens,
    )


async def test_common_instruction_is_computed_once(default_core):
    instruction = make_instruction("once")
    lengths, shared = prompt_lengths(default_core, instruction)
    assert shared >= 496  # a ~500-token instruction
    decodes = len(QUESTIONS) * (PARAMS.max_tokens - 1)
    before = default_core.stats().engines[0]
    shared_answers = await run_app(default_core, "tenant-a", instruction)
    computed, cached = engine_delta(default_core, before)
    assert computed == shared + sum(n - shared for n in lengths) + decodes
    assert cached == len(QUESTIONS) * shared

    unshared = default_core.sibling(ServeConfig(prefix_sharing=False))
    before = default_core.stats().engines[0]
    answers = await run_app(unshared, "tenant-b", instruction)
    computed, cached = engine_delta(default_core, before)
    assert computed == sum(lengths) + decodes  # every call computed the instruction itself
    assert cached == 0
    assert answers == shared_answers


async def test_a_prefix_already_cached_is_not_pinned_again(default_core):
    instruction = make_instruction("again")
    lengths, shared = prompt_lengths(default_core, instruction)
    decodes = len(QUESTIONS) * (PARAMS.max_tokens - 1)
    first = await run_app(default_core, "tenant-e", instruction)
    before = default_core.stats().engines[0]
    second = await run_app(default_core, "tenant-e", instruction)
    after = default_core.stats().engines[0]
    computed, cached = engine_delta(default_core, before)
    assert computed == sum(n - shared for n in lengths) + decodes  # no pin, no prefill
    assert cached == len(QUESTIONS) * shared
    assert after.num_prompt_tokens - before.num_prompt_tokens == sum(lengths)  # no pin request
    assert second == first


async def test_tenants_never_share_a_prefix(default_core):
    instruction = make_instruction("tenants")
    lengths, shared = prompt_lengths(default_core, instruction)
    decodes = len(QUESTIONS) * (PARAMS.max_tokens - 1)
    before = default_core.stats().engines[0]
    first = await run_app(default_core, "tenant-c", instruction)
    second = await run_app(default_core, "tenant-d", instruction)
    computed, _ = engine_delta(default_core, before)
    per_tenant = shared + sum(n - shared for n in lengths) + decodes
    assert computed == 2 * per_tenant
    assert first == second


def test_find_shares_groups_by_namespace_and_common_blocks():
    base = list(range(100))
    prompts = [
        ("a", "t1", base + [1, 2]),
        ("b", "t1", base + [3]),
        ("c", "t2", base + [4]),  # same tokens, other tenant
        ("d", "t1", [9] * 50),
    ]
    shares = find_shares(prompts, block_size=16, min_tokens=32)
    assert [(s.namespace, s.members, len(s.prompt)) for s in shares] == [("t1", ["a", "b"], 96)]
