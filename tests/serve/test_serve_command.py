"""`parrotlet serve`: its flags, and the app under a real uvicorn server on a free port."""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
import uvicorn

from parrotlet.cli import _build_parser, _engine_config, config_from_args
from parrotlet.serve.app import create_app
from parrotlet.serve.auth import ApiKeys
from parrotlet.serve.config import ServeConfig


def test_serve_parser_accepts_its_flags() -> None:
    args = _build_parser().parse_args(
        ["serve", "--model", "/models/x", "--host", "0.0.0.0", "--port", "9001",
         "--api-key", "k1", "--api-key", "k2", "--block-size", "32", "--max-num-seqs", "8",
         "--no-lazy", "--no-prefix-sharing", "--max-sessions", "5",
         "--default-get-timeout-s", "2.5"]
    )  # fmt: skip

    assert (args.host, args.port, args.api_key) == ("0.0.0.0", 9001, ["k1", "k2"])
    engine = _engine_config(args)
    assert (engine.model, engine.cache.block_size, engine.scheduler.max_num_seqs) == (
        "/models/x", 32, 8
    )  # fmt: skip
    assert config_from_args(ServeConfig, args) == ServeConfig(
        lazy=False, prefix_sharing=False, max_sessions=5, default_get_timeout_s=2.5
    )


def test_serve_attention_flag_and_its_alias() -> None:
    for flag in ("--attention", "--attention-backend"):
        args = _build_parser().parse_args(["serve", "--device", "cuda", flag, "reference"])
        engine = _engine_config(args)
        assert (engine.device, engine.attention_backend) == ("cuda", "reference")
    assert _engine_config(_build_parser().parse_args(["serve"])).attention_backend == "auto"


def test_serve_defaults() -> None:
    args = _build_parser().parse_args(["serve"])

    assert (args.host, args.port, args.api_key) == ("127.0.0.1", 8000, None)
    assert config_from_args(ServeConfig, args) == ServeConfig()


def test_serve_help_documents_each_config_group_and_default(capsys) -> None:
    with pytest.raises(SystemExit):
        _build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps at the terminal width

    assert "SchedulerConfig: Continuous batching: at most `max_num_seqs` sequences" in text
    assert "--max-num-batched-tokens MAX_NUM_BATCHED_TOKENS (default: 2048)" in text
    assert "--graph-prefix-tiles, --no-graph-prefix-tiles (default: True)" in text


class FakeCore:
    """Only what the lifespan and /health touch: the real core is tested through ASGI."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.config = ServeConfig()

    async def start(self) -> None:
        self.events.append("start")

    async def close(self) -> None:
        self.events.append("close")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_uvicorn_serves_the_app_and_runs_the_lifespan() -> None:
    core = FakeCore()
    port = free_port()
    app = create_app(core, ApiKeys(["smoke-key"]))  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        health = httpx.get(f"http://127.0.0.1:{port}/health")
        denied = httpx.post(f"http://127.0.0.1:{port}/v1/sessions")
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert denied.status_code == 401
    assert core.events == ["start", "close"]


def test_serve_warns_when_auth_is_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import parrotlet.serve.core as core_module
    from parrotlet import cli

    fake = SimpleNamespace(
        model_name="m",
        max_model_len=64,
        stats=lambda: SimpleNamespace(engines=[]),
        config=ServeConfig(),
    )
    monkeypatch.setattr(core_module.ServeCore, "from_config", staticmethod(lambda *a: fake))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    monkeypatch.delenv("PARROTLET_API_KEYS", raising=False)

    with caplog.at_level(logging.WARNING):
        assert cli.main(["serve"]) == 0

    assert "authentication is DISABLED" in caplog.text
