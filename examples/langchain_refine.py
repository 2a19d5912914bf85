"""A refine ("chain") summary written with LangChain LCEL — `prompt | llm | StrOutputParser()`
in a loop — run on parrotlet: inside `parrotlet_graph(llm)` the whole chain is ONE graph (one
submit); each step's summary flows into the next prompt on the server. CPU, default model.
"""

from __future__ import annotations

from langchain_core.language_models import BaseLanguageModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

import parrotlet as P
from langchain_parrotlet import ChatParrotlet, parrotlet_graph
from parrotlet.demo import sample_chunks

SUMMARIZE = "Summarize this part of a story in one or two sentences:\n\n{context}"
REFINE = (
    "Here is a summary of a story so far:\n{summary}\n\n"
    "Here is the next part of the story:\n{context}\n\n"
    "Write an updated summary of the whole story in two or three sentences."
)


def refine_summary(llm: BaseLanguageModel, chunks: list[str]) -> str:
    """Summarize the first chunk, then refine the summary with each next chunk (plain LCEL)."""
    initial = ChatPromptTemplate.from_messages([("human", SUMMARIZE)]) | llm | StrOutputParser()
    refine = ChatPromptTemplate.from_messages([("human", REFINE)]) | llm | StrOutputParser()
    summary = initial.invoke({"context": chunks[0]})
    for chunk in chunks[1:]:
        summary = refine.invoke({"summary": summary, "context": chunk})
    return summary


def main(client: P.Client | None = None, max_tokens: int = 64, num_chunks: int = 3) -> str:
    """Run the refine chain as one graph and print the summary and the submissions it took."""
    owned = client is None
    client = client or P.Client.in_process()
    try:
        llm = ChatParrotlet(client=client, temperature=0, max_tokens=max_tokens)
        chunks = sample_chunks(words_per_chunk=60)[:num_chunks]
        submits = _submits(client)
        with parrotlet_graph(llm):
            summary = str(refine_summary(llm, chunks))  # the first read: one submit
        print(summary)
        if client.core is not None:
            print(f"({len(chunks)} calls, {_submits(client) - submits} submission)")
        return summary
    finally:
        if owned:
            client.close()


def _submits(client: P.Client) -> int:
    return client.core.stats().client_requests.get("submit", 0) if client.core else 0


if __name__ == "__main__":
    main()
