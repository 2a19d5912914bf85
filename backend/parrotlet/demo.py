"""`parrotlet demo`: two summary apps over a bundled document, on the embedded default model.

Each app runs twice on the same in-process engine: app-level (the whole graph sent at once, the
server runs dependent calls itself) and request-level (the client sends one call at a time and
waits for its text before the next, as apps on a per-request API do). Prints results and timings.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from importlib import resources

import parrotlet as P

CHUNK_WORDS = 140


@P.semantic_function(temperature=0.0, max_tokens=48)
def summarize(chunk, summary):
    """Summarize this part of a story in one or two sentences.

    {{input:chunk}}{{output:summary}}"""


@P.semantic_function(temperature=0.0, max_tokens=64)
def refine(summary, chunk, new_summary):
    """Here is a summary of a story so far:
    {{input:summary}}

    Here is the next part of the story:
    {{input:chunk}}

    Write an updated summary of the whole story in two or three sentences.{{output:new_summary}}"""


@P.semantic_function(temperature=0.0, max_tokens=80)
def combine(summaries, summary):
    """Here are summaries of the parts of a story, in order:
    {{input:summaries}}

    Write one short paragraph that summarizes the whole story.{{output:summary}}"""


def sample_chunks(words_per_chunk: int = CHUNK_WORDS) -> list[str]:
    """The bundled sample document, split into chunks of whole paragraphs."""
    text = resources.files("parrotlet").joinpath("data/sample_document.txt").read_text()
    chunks, current = [], []
    for paragraph in text.split("\n\n")[1:]:  # skip the title
        current.append(paragraph.strip())
        if sum(len(p.split()) for p in current) >= words_per_chunk:
            chunks.append("\n\n".join(current))
            current = []
    if current:
        chunks.append("\n\n".join(current))
    return chunks


# ---- the two apps, app-level ------------------------------------------------------------------
def chain_app_level(client: P.Client, chunks: list[str]) -> Iterator[str]:
    with client.session():
        summary = summarize(chunks[0])
        for chunk in chunks[1:]:
            summary = refine(summary, chunk)
        yield from summary.stream()  # one submit for all calls, then stream the last


def map_reduce_app_level(client: P.Client, chunks: list[str]) -> Iterator[str]:
    with client.session():
        parts = [summarize(chunk) for chunk in chunks]
        yield from combine(P.join(parts, sep="\n")).stream()


# ---- the same apps, request-level -------------------------------------------------------------
def chain_request_level(client: P.Client, chunks: list[str], delay: float) -> Iterator[str]:
    text = _one_call(client, summarize, delay, chunks[0])
    for chunk in chunks[1:-1]:
        text = _one_call(client, refine, delay, text, chunk)
    yield _one_call(client, refine, delay, text, chunks[-1])


def map_reduce_request_level(client: P.Client, chunks: list[str], delay: float) -> Iterator[str]:
    async def one(chunk: str) -> str:
        await asyncio.sleep(delay)
        async with client.asession():
            return await summarize(chunk).aget()

    async def maps() -> list[str]:
        return await asyncio.gather(*(one(c) for c in chunks))

    summaries = asyncio.run(maps())
    yield _one_call(client, combine, delay, "\n".join(summaries))


def _one_call(client: P.Client, fn: P.SemanticFunction, delay: float, *inputs: str) -> str:
    """One request: the client sends a single call with its inputs as text and waits for it."""
    time.sleep(delay)  # the network round trip an app pays per request
    with client.session():
        return fn(*inputs).get()


# ---- running and reporting ------------------------------------------------------------------
def _timed(label: str, run: Callable[[], Iterator[str]], show: bool) -> tuple[float, str]:
    print(f"\n{label}", flush=True)
    start = time.perf_counter()
    pieces = []
    for delta in run():
        pieces.append(delta)
        if show:
            print(delta, end="", flush=True)
    elapsed = time.perf_counter() - start
    if not show:
        print("".join(pieces), end="")
    print(f"\n  [{elapsed:.1f} s]", flush=True)
    return elapsed, "".join(pieces)


def run_demo(network_delay_ms: float = 0.0) -> int:
    """Load the default model in-process, run both apps both ways, print the comparison table."""
    from parrotlet.serve.config import ServeConfig

    print("parrotlet demo: loading the embedded default model (SmolLM2-135M-Instruct) ...")
    started = time.perf_counter()
    client = P.Client.in_process()
    baseline = client.sibling(ServeConfig(app_scheduling=False, lazy=False))
    assert client.core is not None
    print(
        f"  loaded in {time.perf_counter() - started:.1f} s; KV cache holds "
        f"{client.core.engines[0].stats().capacity_tokens} tokens"
    )
    with client.session():  # warm-up, so the first timed app does not pay one-time costs
        summarize("Hello.").get()
    chunks = sample_chunks()
    print(f"  sample document: {len(chunks)} chunks of ~{CHUNK_WORDS} words")
    delay = network_delay_ms / 1000
    rows = []
    try:
        for app, app_level, request_level in (
            ("chain summary", chain_app_level, chain_request_level),
            ("map-reduce summary", map_reduce_app_level, map_reduce_request_level),
        ):
            calls = len(chunks) if app == "chain summary" else len(chunks) + 1
            t_app, _ = _timed(
                f"== {app}, app-level: {calls} calls as one graph (streaming the result) ==",
                lambda f=app_level: f(client, chunks),
                show=True,
            )
            t_req, _ = _timed(
                f"== {app}, request-level: one call per request ==",
                lambda f=request_level: f(baseline, chunks, delay),
                show=False,
            )
            rows.append((app, t_app, t_req))
    finally:
        baseline.close()
        client.close()
    _print_table(rows, network_delay_ms)
    return 0


def _print_table(rows: list[tuple[str, float, float]], network_delay_ms: float) -> None:
    print(f"\n{'app':<22}{'app-level':>12}{'request-level':>16}{'speedup':>10}")
    for app, t_app, t_req in rows:
        print(f"{app:<22}{t_app:>11.1f}s{t_req:>15.1f}s{t_req / t_app:>9.2f}x")
    print(
        f"(same engine and model; request-level = one call per request, FCFS, prefix caching on, "
        f"{network_delay_ms:g} ms simulated network delay per request)"
    )


if __name__ == "__main__":
    sys.exit(run_demo())
