"""ServeCore on the real default model: dependent calls run server-side, equal one-by-one runs."""

from __future__ import annotations

import asyncio

import pytest

from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.graph.ir import Call, Graph, GraphError, Input, Output, Text, Transform, Variable
from parrotlet.serve.errors import NotFoundError, ServeTimeoutError

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

GREEDY = SamplingParams(temperature=0.0, max_tokens=12)
DOC = "The Eiffel Tower is in Paris. It was built in 1889 for the World's Fair."


def make_chain() -> Graph:
    return Graph(
        (Variable("doc", DOC),),
        (
            Call("c1", (Text("Summarize in one sentence: "), Input("doc"), Output("s1", GREEDY))),
            Call("c2", (Text("Make this shorter: "), Input("s1"), Output("s2", GREEDY))),
            Call("c3", (Text("Translate to French: "), Input("s2"), Output("s3", GREEDY))),
        ),
    )


def one_by_one(core, graph: Graph) -> dict[str, str]:
    """The oracle: each call's prompt built by hand from the previous output's token ids, run
    alone with greedy decoding directly on the engine."""
    engine, asm = core.engines[0].async_engine.engine, core.assembler
    values: dict[str, list[int]] = {"doc": list(asm.encode(DOC))}
    texts = {}
    for call in graph.calls:
        text, var, out = call.segments[0].text, call.segments[1].var, call.segments[2]
        prompt = [*asm.chat_head, *asm.encode(text), *values[var], *asm.chat_tail]
        result = engine.generate([prompt], out.sampling)[0]
        texts[out.var] = result.text
        values[out.var] = asm.spliceable_ids(result.text, result.token_ids)
    return texts


async def test_chain_of_three_is_one_submit_one_get_and_equals_one_by_one(default_core):
    core = default_core
    before = core.stats()
    sid = await core.create_session("tenant-a")
    await core.submit("tenant-a", sid, make_chain())
    info = await core.get_variable("tenant-a", sid, "s3")
    after = core.stats()
    requests = {
        k: after.client_requests.get(k, 0) - before.client_requests.get(k, 0)
        for k in ("submit", "get", "set")
    }
    assert requests == {"submit": 1, "get": 1, "set": 0}
    assert after.calls_started - before.calls_started == 3
    assert after.calls_started_by_server - before.calls_started_by_server == 2
    expected = one_by_one(core, make_chain())
    assert info.value == expected["s3"]
    for var in ("s1", "s2"):
        assert (await core.get_variable("tenant-a", sid, var)).value == expected[var]


async def test_map_join_reduce_runs_wholly_server_side(default_core):
    core = default_core
    sid = await core.create_session("tenant-a")
    parts = ["Cats sleep a lot.", "Dogs love walks.", "Birds sing at dawn."]
    maps = tuple(
        Call(f"m{i}", (Text("One word for this: "), Input(f"p{i}"), Output(f"w{i}", GREEDY)))
        for i in range(3)
    )
    graph = Graph(
        tuple(Variable(f"p{i}", p) for i, p in enumerate(parts)),
        (*maps, Call("r", (Text("Combine: "), Input("joined"), Output("final", GREEDY)))),
        (Transform("j", "join", ("w0", "w1", "w2"), "joined", {"sep": "; "}),),
    )
    before = core.stats()
    await core.submit("tenant-a", sid, graph)
    final = await core.get_variable("tenant-a", sid, "final")
    after = core.stats()
    assert after.calls_started - before.calls_started == 4
    assert after.calls_started_by_server - before.calls_started_by_server == 1  # the reduce
    words = [(await core.get_variable("tenant-a", sid, f"w{i}")).value for i in range(3)]
    joined = await core.get_variable("tenant-a", sid, "joined")
    assert joined.value == "; ".join(words)
    assert final.value and final.completion_tokens <= 12


async def test_lazy_until_fetched_and_stream_equals_value(default_core):
    core = default_core
    sid = await core.create_session("tenant-a")
    await core.submit("tenant-a", sid, make_chain())
    started = core.stats().calls_started
    await asyncio.sleep(0.05)
    assert core.stats().calls_started == started  # nothing runs before a fetch
    deltas = [d async for d in core.stream_variable("tenant-a", sid, "s1")]
    assert "".join(deltas) == (await core.get_variable("tenant-a", sid, "s1")).value
    assert len(deltas) > 1


async def test_a_graph_submitted_with_its_fetch_runs_before_the_get(default_core):
    core = default_core
    before = core.stats()
    sid = await core.create_session("tenant-a", graph=make_chain(), fetch={"s3": "latency"})
    assert core.stats().calls_started - before.calls_started == 1  # c1, with no get yet
    info = await core.get_variable("tenant-a", sid, "s3")
    assert info.value == one_by_one(core, make_chain())["s3"]
    increment = Graph((), (Call("c4", (Text("Again: "), Input("s1"), Output("s4", GREEDY))),))
    started = core.stats().calls_started
    await core.submit("tenant-a", sid, increment, fetch={"s4": "throughput"})
    assert core.stats().calls_started == started + 1
    assert (await core.get_variable("tenant-a", sid, "s4")).value


async def test_a_bad_fetch_refuses_the_whole_submit(default_core):
    core = default_core
    sessions = core.stats().num_sessions
    with pytest.raises(NotFoundError, match="fetched variable 'nope' is in neither the graph"):
        await core.create_session("tenant-a", graph=make_chain(), fetch={"nope": "latency"})
    with pytest.raises(ValueError, match="criterion 'soon' of fetched variable 's3' is not one "
                                         "of 'latency', 'throughput'"):  # fmt: skip
        await core.create_session("tenant-a", graph=make_chain(), fetch={"s3": "soon"})
    with pytest.raises(ValueError, match="no graph given"):
        await core.create_session("tenant-a", fetch={"s3": "latency"})
    assert core.stats().num_sessions == sessions  # no session left behind
    sid = await core.create_session("tenant-a")
    started = core.stats().calls_started
    with pytest.raises(NotFoundError, match="'s9' is in neither the graph nor session"):
        await core.submit("tenant-a", sid, make_chain(), fetch={"s3": "latency", "s9": "latency"})
    assert "c1" not in core._session("tenant-a", sid).index.nodes  # the graph was not added
    assert core.stats().calls_started == started
    core.delete_session("tenant-a", sid)


async def test_isolation_and_errors(default_core):
    core = default_core
    a = await core.create_session("tenant-a")
    await core.submit("tenant-a", a, Graph((Variable("secret", "x"),)))
    with pytest.raises(NotFoundError):
        await core.get_variable("tenant-b", a, "secret")
    b = await core.create_session("tenant-a")
    with pytest.raises(NotFoundError, match="variable 'secret' not found"):
        await core.get_variable("tenant-a", b, "secret")
    await core.submit(
        "tenant-a", b, Graph((Variable("q"),), (Call("c", (Input("q"), Output("o"))),))
    )
    with pytest.raises(ServeTimeoutError, match=r"'o' was not set within 0\.05 s"):
        await core.get_variable("tenant-a", b, "o", timeout=0.05)
    long_text = "word " * 9000
    with pytest.raises(GraphError, match="the model's context is 8192"):
        await core.submit("tenant-a", b, Graph((), (Call("big", (Text(long_text), Output("z"))),)))
    await core.set_variable("tenant-a", b, "q", "Say hi.")
    assert (await core.get_variable("tenant-a", b, "o")).value
    core.delete_session("tenant-a", b)
    with pytest.raises(NotFoundError):
        await core.set_variable("tenant-a", b, "q", "again")
