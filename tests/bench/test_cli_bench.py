"""`parrotlet bench`: runs a workload's smoke version end to end and writes its JSON report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parrotlet.cli import main


def test_bench_chain_summary_smoke_writes_its_table_and_json(
    tmp_path: Path, default_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "chain-summary", "--arch", "tiny-random", "--smoke", "--out", str(tmp_path)]
    assert main([*argv, "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "== chain-summary on CPU" in out
    data = json.loads((tmp_path / "chain-summary-cpu.json").read_text())
    assert (data["workload"], data["device"], data["model"]) == (
        "chain-summary",
        "cpu",
        "tiny-random",
    )
    assert [r["name"] for r in data["ratios"]] == [
        f"chunk {c}, out {o}, {d} ms: request-level / parrotlet latency"
        for c, o in ((32, 4), (48, 8))
        for d in (0, 50)
    ]
    assert all(r["value"] > 0 and r["target"] is None for r in data["ratios"])
    assert data["params"]["repeat"] == 2 and len(data["runs"]) == 2
    for ratio in data["ratios"]:  # the median of two runs, each run's value kept
        assert len(ratio["runs"]) == 2 and ratio["value"] == pytest.approx(sum(ratio["runs"]) / 2)
        assert f"{ratio['name']}: {ratio['value']:.2f}x (runs " in out
    assert data["runs"][0].keys() == data["rows"].keys()
    requests = {k: v["requests"] for k, v in data["rows"].items()}
    assert requests["parrotlet: chunk 32, out 4, 50 ms"] == 2  # the session with its graph + 1 get
    assert requests["request-level: chunk 32, out 4, 50 ms"] == 3  # one per call of the chain


def test_bench_rejects_unknown_workloads_and_bad_archs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "nope"]) == 2
    assert "unknown workload 'nope'; choose from chain-summary" in capsys.readouterr().err
    assert main(["bench", "mixed", "--arch", "gpt-5"]) == 2
    assert "unknown arch 'gpt-5'; choose from llama3-8b-random, tiny-random" in (
        capsys.readouterr().err
    )
    assert main(["bench", "mixed", "--kv-cache-fraction", "1.5"]) == 2
    assert "kv_cache_fraction must be in (0, 1], got 1.5" in capsys.readouterr().err
    assert main(["bench", "mixed", "--repeat", "0"]) == 2
    assert "repeat must be >= 1, got 0" in capsys.readouterr().err
