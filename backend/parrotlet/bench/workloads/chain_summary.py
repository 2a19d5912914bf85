"""Chain summary (Parrot §8.2): a document summarized chunk by chunk, each call refining the
previous summary with the next chunk. Swept over chunk size (fixed document length) and output
length; parrotlet vs a request-level client at 0 and 250 ms network delay per request.
"""

from __future__ import annotations

from parrotlet.bench.apps import PARROTLET, REQUEST_LEVEL, App, fixed_length, run_apps
from parrotlet.bench.report import Ratio, Report
from parrotlet.bench.setup import Bench
from parrotlet.bench.synthetic import SyntheticText
from parrotlet.graph.ir import Call, Graph, Input, Output, PerfCriterion, Text, Variable

FULL = dict(
    document_tokens=8192,
    points=[(512, 50), (1024, 50), (2048, 50), (1024, 25), (1024, 100)],
    delays=[0.0, 0.25],
)
SMOKE = dict(document_tokens=96, points=[(32, 4), (48, 8)], delays=[0.0, 0.05])
TARGET_AT_250MS = 2.0


def chain_app(text: SyntheticText, document_tokens: int, chunk: int, output: int) -> App:
    """One chain of document_tokens // chunk calls; the last summary is the sink."""
    n = document_tokens // chunk
    variables = (Variable("sum-start", " none."),) + tuple(
        Variable(f"chunk{i}", text.text(chunk)) for i in range(n)
    )
    head = Text(text.text(24) + "\nSummary so far:")
    calls, previous = [], "sum-start"
    for i in range(n):
        segments = (
            head,
            Input(previous),
            Text("\nNext part:"),
            Input(f"chunk{i}"),
            Output(f"sum{i}", fixed_length(output)),
        )
        calls.append(Call(f"s{i}", segments, chat=False))
        previous = f"sum{i}"
    return App(Graph(variables, tuple(calls)), {previous: PerfCriterion.LATENCY}, kind="chain")


async def run(bench: Bench, smoke: bool) -> Report:
    sizes = SMOKE if smoke else FULL
    text = SyntheticText(bench.tokenizer, seed=1)
    report = Report("chain-summary", bench.spec.device, bench.spec.model_name, params=sizes)
    configs = {"parrotlet": PARROTLET, "request-level": REQUEST_LEVEL}
    async with bench.cores(configs) as cores:
        await run_apps(
            cores["parrotlet"], [chain_app(text, 64, 32, 2)], "warmup", request_level=False
        )
        for chunk, output in sizes["points"]:
            app = chain_app(text, sizes["document_tokens"], chunk, output)
            for delay in sizes["delays"]:
                point = f"chunk {chunk}, out {output}, {delay * 1000:g} ms"
                times = {}
                for mode in configs:
                    (result,) = await run_apps(
                        cores[mode],
                        [app],
                        f"{mode}-{point}",
                        request_level=mode == "request-level",
                        delay=delay,
                    )
                    times[mode] = result.latency
                    report.rows[f"{mode}: {point}"] = {
                        "latency_s": result.latency,
                        "requests": result.requests,
                    }
                target = TARGET_AT_250MS if delay == 0.25 else None
                report.ratios.append(
                    Ratio(
                        f"{point}: request-level / parrotlet latency",
                        times["request-level"] / times["parrotlet"],
                        target,
                    )
                )
    return report
