"""A LlamaIndex query engine served by parrotlet: a VectorStoreIndex over a few short documents
(offline all-MiniLM-L6-v2 embeddings), queried with `refine` (a server-side chain) and
`tree_summarize` (a server-side map-reduce tree); each query is ONE graph submit.

Run: `python examples/llamaindex_query.py` (CPU, the default model, no network).
"""

from __future__ import annotations

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.indices.prompt_helper import PromptHelper

import parrotlet as P
from llama_index.llms.parrotlet import Parrotlet, local_embedding

DOCUMENTS = [
    "Parrots are birds of the order Psittaciformes. Most parrots live in warm tropical and "
    "subtropical regions of South America, Africa, Asia and Australia, where they eat seeds, "
    "nuts and fruit.",
    "The kea is a large parrot that lives in the alpine forests and mountains of the South "
    "Island of New Zealand. It is one of the few parrots that live in cold places, and it is "
    "famous for solving puzzles.",
    "Budgerigars are small parrots that live in the dry grasslands of inland Australia. They "
    "travel in large flocks in search of water, and people all over the world keep them as pets.",
]
QUESTION = "Where do parrots live?"


def main(client: P.Client | None = None) -> dict[str, str]:
    """Answer QUESTION with both response modes; return {mode: answer}. Builds an in-process
    client (loads the default model) unless `client` is given."""
    own = client is None
    client = client or P.Client.in_process()
    try:
        llm = Parrotlet(client=client, max_tokens=20)  # greedy; context window from the server
        documents = [Document(text=text) for text in DOCUMENTS]
        index = VectorStoreIndex.from_documents(documents, embed_model=local_embedding())
        # Small chunks, so that three short documents make a two-level summary tree.
        small_chunks = PromptHelper.from_llm_metadata(llm.metadata, chunk_size_limit=80)
        synthesizers = {
            "refine": llm.response_synthesizer("refine"),
            "tree_summarize": llm.response_synthesizer(
                "tree_summarize", prompt_helper=small_chunks
            ),
        }
        answers = {}
        for mode, synthesizer in synthesizers.items():
            engine = index.as_query_engine(
                llm=llm, similarity_top_k=3, response_synthesizer=synthesizer
            )
            answers[mode] = str(engine.query(QUESTION)).strip()
            print(f"{mode}: {answers[mode]}")
        return answers
    finally:
        if own:
            client.close()


if __name__ == "__main__":
    main()
