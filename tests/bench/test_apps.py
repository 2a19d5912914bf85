"""The two ways of running an app compute the same tokens; only the client round trips differ."""

from __future__ import annotations

import weakref

import pytest

from parrotlet.bench.apps import PARROTLET, REQUEST_LEVEL, App, fixed_length, run_apps
from parrotlet.bench.workloads.chain_summary import chain_app
from parrotlet.graph.ir import Call, Graph, Input, Output, PerfCriterion, Text, Transform, Variable

pytestmark = pytest.mark.anyio


def map_reduce_app(synthetic, num_maps: int) -> App:
    maps = tuple(
        Call(f"m{i}", (Text("Summarize:"), Input(f"c{i}"), Output(f"s{i}", fixed_length(5))),
             chat=False)
        for i in range(num_maps)
    )  # fmt: skip
    join = Transform("j", "join", tuple(f"s{i}" for i in range(num_maps)), "all", {"sep": "\n"})
    reduce = Call("r", (Text("Combine:"), Input("all"), Output("final", fixed_length(6))),
                  chat=False)  # fmt: skip
    variables = tuple(Variable(f"c{i}", synthetic.text(40)) for i in range(num_maps))
    return App(Graph(variables, (*maps, reduce), (join,)), {"final": PerfCriterion.LATENCY})


async def run_both(bench, app: App, tag: str):
    """Run `app` app-level, then request-level, on the same fresh engine; also return each run's
    serve stats and the prompt tokens the engine was given during it."""
    async with bench.cores({"app": PARROTLET, "req": REQUEST_LEVEL}) as cores:
        engine = cores["app"].engines[0]
        runs, prompt_tokens = [], []
        for name in ("app", "req"):
            before = engine.stats().num_prompt_tokens
            (result,) = await run_apps(
                cores[name], [app], f"{name}-{tag}", request_level=name == "req"
            )
            runs.append(result)
            prompt_tokens.append(engine.stats().num_prompt_tokens - before)
        stats = {name: core.stats() for name, core in cores.items()}
    return runs[0], runs[1], stats, prompt_tokens


async def test_synthetic_text_has_exact_token_counts(tiny_bench, synthetic):
    for n in (1, 17, 300):
        text = synthetic.text(n)
        assert len(tiny_bench.tokenizer.encode(text, add_special_tokens=False)) == n


async def test_chain_outputs_equal_and_only_request_level_round_trips(tiny_bench, synthetic):
    app = chain_app(synthetic, document_tokens=96, chunk=32, output=6)
    assert [c.id for c in app.graph.calls] == ["s0", "s1", "s2"]
    assert app.output_tokens == 18
    app_level, request_level, stats, prompt_tokens = await run_both(tiny_bench, app, "chain")
    assert app_level.outputs == request_level.outputs
    assert set(app_level.outputs) == {"sum2"}
    assert (app_level.requests, request_level.requests) == (2, 3)
    # app-level: 1 submit + 1 get, and the server started the two dependent calls itself
    assert stats["app"].client_requests == {"create_session": 1, "submit": 1, "get": 1,
                                            "delete_session": 1}  # fmt: skip
    assert stats["app"].calls_started_by_server == 2
    assert stats["req"].client_requests == {"complete": 3}
    n = lambda text: len(tiny_bench.tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    per_call = 24 + n("\nSummary so far:") + n("\nNext part:") + 32  # + the previous summary
    assert prompt_tokens == [3 * per_call + n(" none.") + 6 + 6] * 2


async def test_map_reduce_outputs_equal_with_client_side_join(tiny_bench, synthetic):
    app = map_reduce_app(synthetic, num_maps=4)
    app_level, request_level, stats, prompt_tokens = await run_both(tiny_bench, app, "mr")
    assert app_level.outputs == request_level.outputs
    assert request_level.requests == 5  # 4 maps + the reduce; the join ran in the client
    assert stats["app"].calls_started_by_server == 1  # the reduce, after the server-side join
    assert prompt_tokens[0] == prompt_tokens[1]  # the same prompts, token for token


async def test_arrivals_are_honoured(tiny_bench, synthetic):
    app = chain_app(synthetic, document_tokens=32, chunk=32, output=2)
    late = App(app.graph, app.fetch, arrival=0.3, kind="late")
    async with tiny_bench.cores({"app": PARROTLET}) as cores:
        results = await run_apps(cores["app"], [app, late], "arrive", request_level=False)
    assert [r.kind for r in results] == ["chain", "late"]
    assert all(r.latency < 5 for r in results)


async def test_an_engine_is_freed_before_the_next_cores_sizes_its_pool(tiny_bench):
    """Workloads run `async with bench.cores(...) as cores` in a loop: the previous block's
    engine must be gone when the next one measures free memory, though `cores` still names
    the previous block's dict until the next block binds it."""
    engines = []
    for _ in range(2):
        async with tiny_bench.cores({"app": PARROTLET}) as cores:
            engines.append(weakref.ref(cores["app"].engines[0].async_engine.engine))
            assert [e() is not None for e in engines] == [False] * (len(engines) - 1) + [True]
    assert cores == {} and engines[-1]() is None
