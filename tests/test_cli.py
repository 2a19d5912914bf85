"""`parrotlet generate` on the embedded default model answers a real question."""

from __future__ import annotations

from pathlib import Path

import pytest

from parrotlet.cli import main


@pytest.mark.slow
def test_generate_answers_paris_on_the_default_model(
    default_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "--prompt", "What is the capital of France?"]) == 0
    out, err = capsys.readouterr()
    assert "Paris" in out
    assert "KV capacity 23296 tokens" in err  # 1 GiB of float32 KV for SmolLM2-135M


def test_bad_flags_are_reported_with_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--prompt", "hi", "--block-size", "0"]) == 2
    assert "block_size must be >= 1, got 0" in capsys.readouterr().err


def test_bench_names_a_bad_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "mixed", "--smoke", "--arch", "tiny-random", "--device", "gpu"]) == 2
    assert "device must be cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err
