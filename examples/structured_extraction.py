"""Structured outputs inside a Semantic-Variable graph: each chunk of the bundled document is
read into a JSON record (a Guide makes the engine emit only JSON of the schema), a server-side
`json_field` takes each record's topic, and one call combines the topics — one submit for the
whole app, no client round trip between the steps. CPU, default model.
"""

from __future__ import annotations

import json

import parrotlet as P
from parrotlet.demo import sample_chunks

RECORD = {
    "type": "object",
    "properties": {
        "topic": {"type": "string", "maxLength": 60},
        "year": {"type": "integer"},
    },
    "required": ["topic", "year"],
}


@P.semantic_function(temperature=0, max_tokens=40, guide=P.Guide.json(RECORD))
def extract(chunk, record):
    """Read this text, then give its topic and the first year it mentions as JSON.

    {{input:chunk}}{{output:record}}"""


@P.semantic_function(temperature=0, max_tokens=40)
def headline(topics, title):
    """Write one headline that covers these topics:
    {{input:topics}}{{output:title}}"""


def main(client: P.Client | None = None, num_chunks: int = 3) -> tuple[list[dict], str]:
    """Print each chunk's record and the headline; return (the records, the headline)."""
    owned = client is None
    client = client or P.Client.in_process()
    try:
        with client.session():
            records = [extract(chunk) for chunk in sample_chunks()[:num_chunks]]
            topics = P.join([r.json_field("topic") for r in records], sep="\n")
            title = headline(topics)
            text = title.get()  # the first fetch: ONE submit of the whole graph
            parsed = [json.loads(r.get()) for r in records]
        for record in parsed:
            print(json.dumps(record))
        print(f"headline: {text}")
        return parsed, text
    finally:
        if owned:
            client.close()


if __name__ == "__main__":
    main()
