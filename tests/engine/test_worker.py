"""Engine worker pieces that need no model: JSON-lines streaming, keep-alives, options."""

from __future__ import annotations

import asyncio
import json

import pytest

from parrotlet.engine.worker import WorkerOptions, _json_lines


async def make_items(fail: Exception | None):
    yield {"n": 1}
    await asyncio.sleep(0.25)
    yield {"n": 2}
    if fail is not None:
        raise fail


@pytest.mark.anyio
async def test_json_lines_keep_quiet_streams_alive_and_end_with_an_error_line() -> None:
    lines = [line async for line in _json_lines(make_items(ValueError("bad prompt")), 0.1)]

    assert lines[0] == '{"n": 1}\n'
    assert set(lines[1:-2]) == {"\n"} and len(lines[1:-2]) >= 2
    assert lines[-2] == '{"n": 2}\n'
    assert json.loads(lines[-1]) == {"stream_error": "bad prompt", "invalid": True}


@pytest.mark.anyio
async def test_leaving_a_json_lines_stream_cancels_its_source() -> None:
    closed = asyncio.Event()

    async def endless():
        try:
            while True:
                yield {"n": 0}
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    stream = _json_lines(endless(), 1.0)
    assert await anext(stream) == '{"n": 0}\n'
    await stream.aclose()

    assert closed.is_set()


def test_worker_options_are_validated() -> None:
    with pytest.raises(ValueError, match="server must be an http"):
        WorkerOptions(server="localhost:8000")
    with pytest.raises(ValueError, match="port must be in"):
        WorkerOptions(server="http://x", port=70000)


def test_engine_worker_and_remote_serve_flags_parse() -> None:
    from parrotlet.cli import _build_parser, _engine_config

    args = _build_parser().parse_args(
        ["engine-worker", "--server", "http://srv:8000", "--name", "gpu1", "--port", "9100",
         "--engine-key", "k", "--max-num-seqs", "8"]
    )  # fmt: skip
    assert (args.server, args.name, args.host, args.port, args.engine_key) == (
        "http://srv:8000", "gpu1", "127.0.0.1", 9100, "k"
    )  # fmt: skip
    assert _engine_config(args).scheduler.max_num_seqs == 8
    assert _build_parser().parse_args(["serve", "--remote-engines"]).remote_engines is True
