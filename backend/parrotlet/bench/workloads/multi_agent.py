"""Multi-agent programming (Parrot §8.4, MetaGPT-like): an architect designs N files, N coders
write them, N reviewers review the code, and the coders revise it, for `rounds` rounds. Each role
has a long prompt shared by all its calls; the final code of every file is fetched. Swept over N;
parrotlet vs request-level clients (0 and 250 ms per request) and parrotlet without sharing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from parrotlet.bench.apps import PARROTLET, REQUEST_LEVEL, App, fixed_length, run_apps
from parrotlet.bench.report import Ratio, Report
from parrotlet.bench.setup import Bench
from parrotlet.bench.synthetic import SyntheticText
from parrotlet.engine.config import CacheConfig, EngineConfig
from parrotlet.graph.ir import Call, Graph, Input, Output, PerfCriterion, Segment, Text, Variable
from parrotlet.serve.core import ServeCore

FULL = dict(
    role_tokens=2500,
    task_tokens=100,
    file_tokens=20,
    design=150,
    code=150,
    review=100,
    rounds=1,
    files=[4, 8, 12, 16],
    delays=[0.0, 0.25],
    min_shared=256,
    cpu_kv_bytes=1 << 30,
)
SMOKE = dict(
    role_tokens=64,
    task_tokens=8,
    file_tokens=4,
    design=4,
    code=4,
    review=3,
    rounds=1,
    files=[2, 3],
    delays=[0.0, 0.05],
    min_shared=16,
    cpu_kv_bytes=1 << 26,
)
TARGET = 3.0
NO_SHARING = replace(PARROTLET, prefix_sharing=False)


@dataclass(frozen=True)
class Roles:
    """The long role prompts, the same for every program of a run (so they can be shared)."""

    architect: str
    coder: str
    reviewer: str

    @classmethod
    def synthetic(cls, text: SyntheticText, num_tokens: int) -> Roles:
        return cls(text.text(num_tokens), text.text(num_tokens), text.text(num_tokens))


def program_app(
    text: SyntheticText, roles: Roles, num_files: int, *, task_tokens: int, file_tokens: int,
    design: int, code: int, review: int, rounds: int,
) -> App:  # fmt: skip
    """One program: architect -> N coders -> (N reviewers -> N revisions) x rounds."""
    files = [Variable(f"file{i}", text.text(file_tokens)) for i in range(num_files)]
    variables = (Variable("task", text.text(task_tokens)), *files)
    architect = (
        Text(roles.architect),
        Text("\nTask:"),
        Input("task"),
        Text("\nDesign:"),
        Output("design", fixed_length(design)),
    )
    calls = [Call("architect", architect, chat=False)]
    calls += [_coder(roles, i, 0, code, ()) for i in range(num_files)]
    for r in range(rounds):
        calls += [_reviewer(roles, i, r, review) for i in range(num_files)]
        for i in range(num_files):
            previous = (
                Text("\nCode:"),
                Input(f"code{i}_{r}"),
                Text("\nReview:"),
                Input(f"review{i}_{r}"),
            )
            calls.append(_coder(roles, i, r + 1, code, previous))
    fetch = {f"code{i}_{rounds}": PerfCriterion.LATENCY for i in range(num_files)}
    return App(Graph(variables, tuple(calls)), fetch, kind=f"program-{num_files}")


def _coder(roles: Roles, i: int, version: int, code: int, previous: tuple[Segment, ...]) -> Call:
    """Coder i writing version `version` of its file (0: from the design; later: a revision)."""
    segments = (
        Text(roles.coder),
        Text("\nDesign:"),
        Input("design"),
        Text("\nFile:"),
        Input(f"file{i}"),
        *previous,
        Text("\nCode:"),
        Output(f"code{i}_{version}", fixed_length(code)),
    )
    return Call(f"code{i}_{version}", segments, chat=False)


def _reviewer(roles: Roles, i: int, version: int, review: int) -> Call:
    """Reviewer of version `version` of file i."""
    segments = (
        Text(roles.reviewer),
        Text("\nCode:"),
        Input(f"code{i}_{version}"),
        Text("\nReview:"),
        Output(f"review{i}_{version}", fixed_length(review)),
    )
    return Call(f"review{i}_{version}", segments, chat=False)


async def run(bench: Bench, smoke: bool) -> Report:
    sizes = SMOKE if smoke else FULL
    text = SyntheticText(bench.tokenizer, seed=3)
    roles = Roles.synthetic(text, sizes["role_tokens"])
    shape = {k: sizes[k] for k in ("task_tokens", "file_tokens", "design", "code", "review")}
    shape["rounds"] = sizes["rounds"]
    apps = {n: program_app(text, roles, n, **shape) for n in sizes["files"]}
    warmup = program_app(text, Roles.synthetic(text, 32), 2, **(shape | {"rounds": 1}))
    report = Report("multi-agent", bench.spec.device, bench.spec.model_name, params=sizes)
    shared, unshared = engine_configs(sizes)
    configs = {"parrotlet": PARROTLET, "request-level": REQUEST_LEVEL}
    async with bench.cores(configs, engine=shared) as cores:
        await run_apps(cores["parrotlet"], [warmup], "warmup", request_level=False)
        for n, app in apps.items():
            await _measure(report, cores["parrotlet"], app, f"parrotlet: {n} files", 0.0, False)
            for delay in sizes["delays"]:
                name = f"request-level {delay * 1000:g} ms: {n} files"
                await _measure(report, cores["request-level"], app, name, delay, True)
    async with bench.cores({"no sharing": NO_SHARING}, engine=unshared) as cores:
        await run_apps(cores["no sharing"], [warmup], "warmup", request_level=False)
        for n, app in apps.items():
            await _measure(report, cores["no sharing"], app, f"no sharing: {n} files", 0.0, False)
    _add_ratios(report, sizes)
    return report


def engine_configs(sizes: dict) -> tuple[EngineConfig, EngineConfig]:
    """The engine with every sharing feature on, and one with prefix caching and shared-prefix
    attention off (every call holds and reads its own copy of its role prompt)."""
    shared = EngineConfig(
        shared_prefix_min_tokens=sizes["min_shared"],
        cache=CacheConfig(cpu_kv_cache_bytes=sizes["cpu_kv_bytes"]),
    )
    cache = replace(shared.cache, enable_prefix_caching=False)
    return shared, replace(shared, shared_prefix_attention=False, cache=cache)


async def _measure(
    report: Report, core: ServeCore, app: App, name: str, delay: float, request_level: bool
) -> None:
    """Run `app` once on `core` (tenant = `name`, so no run reuses another's cache)."""
    before = core.engines[0].stats()
    (result,) = await run_apps(core, [app], name, request_level=request_level, delay=delay)
    after = core.engines[0].stats()
    report.rows[name] = {
        "latency_s": result.latency,
        "requests": result.requests,
        "computed_tokens": after.num_computed_tokens - before.num_computed_tokens,
    }


def _add_ratios(report: Report, sizes: dict) -> None:
    """Per N: each request-level baseline and the no-sharing ablation over parrotlet."""
    for n in sizes["files"]:
        base = report.rows[f"parrotlet: {n} files"]["latency_s"]
        for delay in sizes["delays"]:
            latency = report.rows[f"request-level {delay * 1000:g} ms: {n} files"]["latency_s"]
            name = f"{n} files: request-level {delay * 1000:g} ms / parrotlet latency"
            report.ratios.append(Ratio(name, latency / base, TARGET))
        latency = report.rows[f"no sharing: {n} files"]["latency_s"]
        report.ratios.append(Ratio(f"{n} files: no sharing / parrotlet latency", latency / base))
