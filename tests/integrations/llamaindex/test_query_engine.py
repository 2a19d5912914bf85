"""VectorStoreIndex query engines on Parrotlet: `refine` and `tree_summarize` run as ONE graph per
query (shape, task groups and submissions asserted) and answer exactly as LlamaIndex's own
per-call synthesizers do on the same LLM."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core import get_response_synthesizer as eager_synthesizer
from llama_index.core.indices.prompt_helper import PromptHelper
from llama_index.core.prompts.default_prompts import (
    DEFAULT_REFINE_PROMPT,
    DEFAULT_TEXT_QA_PROMPT,
    DEFAULT_TREE_SUMMARIZE_PROMPT,
)
from llama_index.core.schema import MetadataMode

import parrotlet as P
from llama_index.llms.parrotlet import (
    Parrotlet,
    ParrotletCompactAndRefine,
    ParrotletRefine,
    ParrotletTreeSummarize,
    get_response_synthesizer,
)
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.graph import ir
from parrotlet.serve.objectives import CallPlan

pytestmark = pytest.mark.slow
LATENCY = ir.PerfCriterion.LATENCY
QUESTION = "Where do parrots live?"
DOCUMENTS = [
    "Parrots are birds of the order Psittaciformes. Most parrots live in warm tropical and "
    "subtropical regions of South America, Africa, Asia and Australia.",
    "The kea is a large parrot that lives in the alpine forests and mountains of the South "
    "Island of New Zealand, one of the few parrots of cold places.",
    "Budgerigars are small parrots that live in the dry grasslands of inland Australia. They "
    "travel in large flocks in search of water.",
]


@pytest.fixture(scope="module")
def index(embed_model: Any) -> VectorStoreIndex:
    documents = [Document(text=text) for text in DOCUMENTS]
    return VectorStoreIndex.from_documents(documents, embed_model=embed_model)


@pytest.fixture(scope="module")
def eager(index: VectorStoreIndex, client: P.Client) -> dict[str, tuple[str, int]]:
    """Per mode: LlamaIndex's own answer (one LLM call per prompt) and its number of submits."""
    return {
        mode: query(index, make_synthesizers(make_llm(client), mode)[0], client)
        for mode in ("refine", "tree_summarize")
    }


def make_llm(client: P.Client, max_tokens: int = 12) -> Parrotlet:
    return Parrotlet(client=client, max_tokens=max_tokens)


def small_chunks(llm: Parrotlet) -> PromptHelper:
    """Chunks of at most 48 tokens: the three documents pack into three tree leaves."""
    return PromptHelper.from_llm_metadata(llm.metadata, chunk_size_limit=48)


def make_synthesizers(llm: Parrotlet, mode: str) -> tuple[Any, Any]:
    """LlamaIndex's own synthesizer for `mode` and the graph one, with the same arguments."""
    kwargs = {"prompt_helper": small_chunks(llm)} if mode == "tree_summarize" else {}
    return (
        eager_synthesizer(llm=llm, response_mode=mode, **kwargs),
        get_response_synthesizer(llm=llm, response_mode=mode, **kwargs),
    )


def retrieved_texts(index: VectorStoreIndex) -> list[str]:
    """The chunks the query engine hands its synthesizer, in order."""
    nodes = index.as_retriever(similarity_top_k=3).retrieve(QUESTION)
    return [n.node.get_content(metadata_mode=MetadataMode.LLM) for n in nodes]


def make_engine(index: VectorStoreIndex, synthesizer: Any) -> Any:
    llm = synthesizer._llm
    return index.as_query_engine(llm=llm, similarity_top_k=3, response_synthesizer=synthesizer)


def query(index: VectorStoreIndex, synthesizer: Any, client: P.Client) -> tuple[str, int]:
    """The answer of one query (as a user writes it) and the number of submits it took."""
    before = client.core.stats().client_requests.get("submit", 0)
    engine = make_engine(index, synthesizer)
    answer = str(engine.query(QUESTION))
    return answer, client.core.stats().client_requests.get("submit", 0) - before


def test_refine_is_one_server_side_chain_equal_to_eager(index, client, eager, recording):
    _, graph_synth = make_synthesizers(make_llm(client), "refine")
    assert isinstance(graph_synth, ParrotletRefine)
    started = client.core.stats().calls_started_by_server
    answer, submits = query(index, graph_synth, client)
    assert (answer, submits) == (eager["refine"][0], 1)
    assert eager["refine"][1] == 3
    assert client.core.stats().calls_started_by_server - started == 2
    [graph] = recording.graphs
    assert [c.id for c in graph.calls] == ["qa-1", "refine-1", "refine-2"]
    assert [(t.id, t.op, t.inputs) for t in graph.transforms] == [
        ("format-1", "format", ("qa-1.text",)),
        ("format-2", "format", ("refine-1.text",)),
    ]
    assert [c.inputs for c in graph.calls] == [(), ("format-1",), ("format-2",)]
    assert all(c.chat for c in graph.calls)
    assert {c.segments[-1].sampling for c in graph.calls} == {SamplingParams(0.0, max_tokens=12)}
    # LlamaIndex's own (completion) prompts: QA first, then refine with the previous answer
    texts = retrieved_texts(index)
    qa_prompt = DEFAULT_TEXT_QA_PROMPT.format(context_str=texts[0], query_str=QUESTION)
    assert graph.calls[0].segments[0] == ir.Text(qa_prompt)
    refine_prompt = DEFAULT_REFINE_PROMPT.format(
        query_str=QUESTION, existing_answer="A{0}", context_msg=texts[1]
    )
    assert graph.transforms[0].args["template"].format("A{0}") == refine_prompt
    plans = recording.plans[-1]
    assert plans == {node: CallPlan(LATENCY) for node in plans}  # a chain: no task group
    assert sorted(plans) == ["format-1", "format-2", "qa-1", "refine-1", "refine-2"]


def test_tree_summarize_is_one_server_side_tree_equal_to_eager(index, client, eager, recording):
    _, graph_synth = make_synthesizers(make_llm(client), "tree_summarize")
    assert isinstance(graph_synth, ParrotletTreeSummarize)
    answer, submits = query(index, graph_synth, client)
    assert (answer, submits) == (eager["tree_summarize"][0], 1)
    [graph] = recording.graphs
    leaves = [f"summarize-{i}" for i in range(1, len(graph.calls))]
    root = f"summarize-{len(graph.calls)}"
    assert len(leaves) == 3
    assert eager["tree_summarize"][1] == len(leaves) + 1
    assert [c.id for c in graph.calls] == [*leaves, root]
    assert [c.inputs for c in graph.calls] == [*[()] * len(leaves), ("format-1",)]
    strips = [(f"strip-{i}", "strip", (f"{leaf}.text",)) for i, leaf in enumerate(leaves, 1)]
    assert [(t.id, t.op, t.inputs) for t in graph.transforms] == [
        *strips,
        ("join-1", "join", tuple(s[0] for s in strips)),
        ("format-1", "format", ("join-1",)),
    ]
    assert graph.transforms[-2].args == {"sep": "\n\n"}
    root_prompt = DEFAULT_TREE_SUMMARIZE_PROMPT.format(context_str="S", query_str=QUESTION)
    assert graph.transforms[-1].args["template"].format("S") == root_prompt
    plans = recording.plans[-1]
    group = f"group:{root}"  # the map stage is one task group, feeding the root
    assert {leaf: plans[leaf] for leaf in leaves} == {
        leaf: CallPlan(LATENCY, group) for leaf in leaves
    }
    assert plans[root] == CallPlan(LATENCY)


def test_compact_the_default_mode_is_a_graph_too(index, client):
    llm = make_llm(client)
    graph_synth = get_response_synthesizer(llm=llm)  # LlamaIndex's default: compact
    assert isinstance(graph_synth, ParrotletCompactAndRefine)
    expected = query(index, eager_synthesizer(llm=llm), client)
    assert query(index, graph_synth, client) == (expected[0], 1)


@pytest.mark.anyio
async def test_async_queries_equal_eager_ones(index, client, eager):
    for mode in ("refine", "tree_summarize"):
        _, synth = make_synthesizers(make_llm(client), mode)
        before = client.core.stats().client_requests.get("submit", 0)
        assert str(await make_engine(index, synth).aquery(QUESTION)) == eager[mode][0]
        assert client.core.stats().client_requests.get("submit", 0) - before == 1


def test_empty_answers_replan_as_refine_would(index, client):
    """max_tokens=0 gives empty answers: Refine then asks the QA prompt again, so the planned
    chain goes wrong after every step and each step takes its own round (submit)."""
    eager_synth, graph_synth = make_synthesizers(make_llm(client, max_tokens=0), "refine")
    assert query(index, eager_synth, client) == ("Empty Response", 3)
    assert query(index, graph_synth, client) == ("Empty Response", 3)


def test_unfit_summaries_add_a_level_as_tree_summarize_would(index, client):
    """Empty summaries do not pack as the graph's join did (TreeSummarize drops them), so the
    next level runs from the summaries in a second submit."""
    eager_synth, graph_synth = make_synthesizers(make_llm(client, max_tokens=0), "tree_summarize")
    assert query(index, eager_synth, client) == ("None", 4)  # Response("") prints as "None"
    assert query(index, graph_synth, client) == ("None", 2)
