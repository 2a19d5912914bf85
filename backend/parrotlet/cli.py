"""The `parrotlet` command: `demo` (the main job), `generate`, `serve`, `engine-worker`, `bench`.

Engine flags are derived from the config dataclasses, so the CLI and the configs cannot drift.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import sys
import time
import types
import typing
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"parrotlet: error: {exc}", file=sys.stderr)
        return 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parrotlet", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    gen = commands.add_parser("generate", help="generate a completion for one prompt")
    gen.add_argument("--prompt", required=True, help="the user message (or raw text with --raw)")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    gen.add_argument("--raw", action="store_true", help="do not apply the chat template")
    gen.add_argument("-v", "--verbose", action="store_true")
    _add_engine_flags(gen)
    gen.set_defaults(run=_generate)
    _add_serve_parser(commands)
    _add_worker_parser(commands)
    demo = commands.add_parser(
        "demo", help="run a chain and a map-reduce summary app-level vs request-level"
    )
    demo.add_argument(
        "--network-delay-ms",
        type=float,
        default=0.0,
        help="simulated network delay per request of the request-level runs",
    )
    demo.add_argument("-v", "--verbose", action="store_true")
    demo.set_defaults(run=_demo)
    _add_bench_parser(commands)
    return parser


def _add_bench_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench", help="run application workloads: parrotlet vs request-level serving"
    )
    bench.add_argument("workloads", nargs="+", metavar="WORKLOAD", help="a workload name, or all")
    bench.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    model = bench.add_mutually_exclusive_group()
    model.add_argument("--model", default=None, help="a local model folder (default model: none)")
    model.add_argument(
        "--arch", default=None, help="a random-weight architecture: llama3-8b-random, tiny-random"
    )
    bench.add_argument("--tokenizer", default=None, help="tokenizer folder for --arch")
    bench.add_argument("--smoke", action="store_true", help="tiny sizes (the CI smoke test)")
    bench.add_argument(
        "--kv-cache-fraction",
        type=float,
        default=None,
        help="the share of free GPU memory (CPU: of the KV setting) for the KV pools (0.85)",
    )
    bench.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each workload N times in a row; its table and JSON give each metric's and "
        "ratio's median and every run's values (1)",
    )
    bench.add_argument("--out", default="benchmarks/apps/results", help="folder for the JSON")
    bench.add_argument("-v", "--verbose", action="store_true")
    bench.set_defaults(run=_bench)


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from parrotlet.bench.run import BenchFailed, run_bench
    from parrotlet.bench.setup import BenchSpec

    fraction = args.kv_cache_fraction
    spec = BenchSpec(
        device=args.device,
        model=args.model,
        arch=args.arch,
        tokenizer=args.tokenizer,
        **({} if fraction is None else {"kv_cache_fraction": fraction}),  # else BenchSpec's
    )
    try:
        run_bench(args.workloads, spec, smoke=args.smoke, out=Path(args.out), repeat=args.repeat)
    except BenchFailed as exc:
        print(f"parrotlet: {exc}", file=sys.stderr)
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from parrotlet.demo import run_demo

    return run_demo(args.network_delay_ms)


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    from parrotlet.engine.config import CacheConfig, EngineConfig, SchedulerConfig

    add_config_flags(parser, EngineConfig, skip=("cache", "scheduler"))
    add_config_flags(parser, CacheConfig)
    add_config_flags(parser, SchedulerConfig)


FLAG_ALIASES = {"attention_backend": ("--attention",)}
"""Shorter spellings of some config flags (the long form always works too)."""


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One `--field-name` flag per scalar field of the config dataclass `cls` (plus aliases),
    in a group that `--help` shows with the class docstring (which says what each field does)
    and each flag's default."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__, inspect.cleandoc(cls.__doc__ or ""))
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        kind = _scalar_type(hints[field.name])
        flags = ("--" + field.name.replace("_", "-"), *FLAG_ALIASES.get(field.name, ()))
        shown = "(default: %(default)s)"
        if kind is bool:
            group.add_argument(
                *flags, action=argparse.BooleanOptionalAction, default=field.default, help=shown
            )
        else:
            group.add_argument(
                *flags, type=kind, default=field.default, dest=field.name, help=shown
            )


def config_from_args(cls: type, args: argparse.Namespace, **nested: object) -> object:
    """Build `cls` from the flags `add_config_flags` added (plus nested configs)."""
    names = {f.name for f in dataclasses.fields(cls)} - set(nested)
    return cls(**{n: getattr(args, n) for n in names}, **nested)


def _scalar_type(hint: object) -> type:
    if isinstance(hint, types.UnionType):  # `X | None`
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    assert isinstance(hint, type), f"unsupported config field type {hint!r}"
    return hint


def _engine_config(args: argparse.Namespace):
    from parrotlet.engine.config import CacheConfig, EngineConfig, SchedulerConfig

    return config_from_args(
        EngineConfig,
        args,
        cache=config_from_args(CacheConfig, args),
        scheduler=config_from_args(SchedulerConfig, args),
    )


def _generate(args: argparse.Namespace) -> int:
    from parrotlet.engine.engine import LLMEngine
    from parrotlet.engine.sampling_params import SamplingParams
    from parrotlet.engine.tokenizer import encode_prompt

    started = time.perf_counter()
    engine = LLMEngine.from_config(_engine_config(args))
    loaded = time.perf_counter()
    token_ids = encode_prompt(engine.tokenizer, args.prompt, chat=not args.raw)
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
    for out in _stream(engine, token_ids, params):
        print(out.text_delta, end="", flush=True)
    print()
    done = time.perf_counter()
    print(
        f"[{len(out.token_ids)} tokens in {done - loaded:.2f} s; model loaded in "
        f"{loaded - started:.1f} s; KV capacity {engine.capacity_tokens} tokens]",
        file=sys.stderr,
    )
    return 0


def _stream(engine, token_ids, params):
    rid = engine.add_request(token_ids, params)
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id == rid:
                yield out


# ---- serve -----------------------------------------------------------------------------------
def _add_serve_parser(commands: argparse._SubParsersAction) -> None:
    from parrotlet.serve.config import ServeConfig

    serve = commands.add_parser("serve", help="serve the HTTP API (sessions + OpenAI-compatible)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--api-key",
        action="append",
        metavar="KEY",
        help="accepted API key (repeatable; default: comma-separated $PARROTLET_API_KEYS)",
    )
    serve.add_argument(
        "--engine-key",
        action="append",
        metavar="KEY",
        help="key engine workers register with (repeatable; default: $PARROTLET_ENGINE_KEYS)",
    )
    serve.add_argument(
        "--remote-engines",
        action="store_true",
        help="load no weights here: serve the engines that `parrotlet engine-worker` registers",
    )
    serve.add_argument("-v", "--verbose", action="store_true")
    _add_engine_flags(serve)
    add_config_flags(serve, ServeConfig)
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from parrotlet.serve.app import create_app
    from parrotlet.serve.auth import ENGINE_ENV_VAR, ENV_VAR, ApiKeys
    from parrotlet.serve.config import ServeConfig
    from parrotlet.serve.core import ServeCore

    api_keys = ApiKeys.from_sources(args.api_key)
    engine_keys = ApiKeys.from_sources(args.engine_key, env_var=ENGINE_ENV_VAR)
    serve_config = config_from_args(ServeConfig, args)
    if args.remote_engines:  # the tokenizer only; engines come from `parrotlet engine-worker`
        core = ServeCore.from_config(_engine_config(args), serve_config, local=False)
    else:
        core = ServeCore.from_config(_engine_config(args), serve_config)
    capacity = sum(e.capacity_tokens for e in core.stats().engines)
    print(
        f"parrotlet: serving {core.model_name} (context {core.max_model_len} tokens, "
        f"KV capacity {capacity} tokens) on http://{args.host}:{args.port}",
        file=sys.stderr,
    )
    if not api_keys.enabled:
        logging.getLogger("parrotlet.serve").warning(
            "no API keys configured (--api-key or $%s): authentication is DISABLED and every "
            "request is tenant 'default'",
            ENV_VAR,
        )
    uvicorn.run(
        create_app(core, api_keys, engine_keys),
        host=args.host,
        port=args.port,
        log_level="info" if args.verbose else "warning",
    )
    return 0


# ---- engine-worker -----------------------------------------------------------------------------
def _add_worker_parser(commands: argparse._SubParsersAction) -> None:
    worker = commands.add_parser(
        "engine-worker", help="run one engine that registers with a `parrotlet serve` server"
    )
    worker.add_argument("--server", required=True, help="the server's URL, e.g. http://host:8000")
    worker.add_argument("--name", default=None, help="default: <hostname>-<port>")
    worker.add_argument("--host", default="127.0.0.1")
    worker.add_argument("--port", type=int, default=0, help="0: any free port")
    worker.add_argument(
        "--engine-key",
        default=None,
        help="one of the server's engine keys (default: the first of $PARROTLET_ENGINE_KEYS)",
    )
    worker.add_argument("-v", "--verbose", action="store_true")
    _add_engine_flags(worker)
    worker.set_defaults(run=_engine_worker)


def _engine_worker(args: argparse.Namespace) -> int:
    import os

    from parrotlet.engine.worker import WorkerOptions, run_worker
    from parrotlet.serve.auth import ENGINE_ENV_VAR

    env_keys = [k.strip() for k in os.environ.get(ENGINE_ENV_VAR, "").split(",") if k.strip()]
    options = WorkerOptions(
        server=args.server,
        name=args.name,
        host=args.host,
        port=args.port,
        api_key=args.engine_key or (env_keys[0] if env_keys else None),
    )
    return run_worker(_engine_config(args), options, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
