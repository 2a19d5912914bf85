"""Map-reduce summary written the way LangChain's docs do it — a LangGraph graph with `Send`
fan-out and a reduce node, and the LCEL `.batch` + reduce variant — run on parrotlet: inside
`parrotlet_graph(llm)` each app is ONE graph (one submit) whose reduce call waits on the map calls
on the server. CPU, default model.
"""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Any, TypedDict

from langchain_core.language_models import BaseLanguageModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

import parrotlet as P
from langchain_parrotlet import ChatParrotlet, parrotlet_graph
from parrotlet.demo import sample_chunks

MAP = "Write a concise summary of the following:\n\n{context}"
REDUCE = (
    "The following is a set of summaries:\n{docs}\n\n"
    "Take these and distill it into a final, consolidated summary of the main themes."
)


def chains(llm: BaseLanguageModel) -> tuple[Runnable, Runnable]:
    """The map chain (one summary per document) and the reduce chain (one over all)."""
    map_chain = ChatPromptTemplate.from_messages([("human", MAP)]) | llm | StrOutputParser()
    reduce_chain = ChatPromptTemplate.from_messages([("human", REDUCE)]) | llm | StrOutputParser()
    return map_chain, reduce_chain


class OverallState(TypedDict):
    contents: list[str]
    summaries: Annotated[list, operator.add]
    final_summary: str


class SummaryState(TypedDict):
    content: str


def build_graph(llm: BaseLanguageModel) -> Any:
    """The LangGraph app: map_summaries fans out with Send, generate_final_summary reduces."""
    map_chain, reduce_chain = chains(llm)

    async def generate_summary(state: SummaryState) -> dict[str, list[str]]:
        return {"summaries": [await map_chain.ainvoke({"context": state["content"]})]}

    def map_summaries(state: OverallState) -> list[Send]:
        return [Send("generate_summary", {"content": c}) for c in state["contents"]]

    async def generate_final_summary(state: OverallState) -> dict[str, str]:
        docs = "\n\n".join(state["summaries"])
        return {"final_summary": await reduce_chain.ainvoke({"docs": docs})}

    graph = StateGraph(OverallState)
    graph.add_node("generate_summary", generate_summary)
    graph.add_node("generate_final_summary", generate_final_summary)
    graph.add_conditional_edges(START, map_summaries, ["generate_summary"])
    graph.add_edge("generate_summary", "generate_final_summary")
    graph.add_edge("generate_final_summary", END)
    return graph.compile()


async def langgraph_map_reduce(llm: BaseLanguageModel, contents: list[str]) -> str:
    result = await build_graph(llm).ainvoke({"contents": contents})
    return result["final_summary"]


def lcel_map_reduce(llm: BaseLanguageModel, contents: list[str]) -> str:
    """The LCEL variant: `.batch` over the documents, then the reduce chain."""
    map_chain, reduce_chain = chains(llm)
    summaries = map_chain.batch([{"context": c} for c in contents])
    return reduce_chain.invoke({"docs": "\n\n".join(summaries)})


def main(client: P.Client | None = None, max_tokens: int = 48, num_chunks: int = 3) -> str:
    """Run both variants, each as one graph; print the summaries and the submissions."""
    owned = client is None
    client = client or P.Client.in_process()
    try:
        llm = ChatParrotlet(client=client, temperature=0, max_tokens=max_tokens)
        contents = sample_chunks(words_per_chunk=60)[:num_chunks]
        submits = _submits(client)
        with parrotlet_graph(llm):
            graph_summary = str(asyncio.run(langgraph_map_reduce(llm, contents)))
        with parrotlet_graph(llm):
            lcel_summary = str(lcel_map_reduce(llm, contents))
        print(f"LangGraph Send map-reduce:\n{graph_summary}\n")
        print(f"LCEL batch + reduce:\n{lcel_summary}")
        if client.core is not None:
            print(f"({len(contents) + 1} calls per app, {_submits(client) - submits} submissions)")
        return graph_summary
    finally:
        if owned:
            client.close()


def _submits(client: P.Client) -> int:
    return client.core.stats().client_requests.get("submit", 0) if client.core else 0


if __name__ == "__main__":
    main()
