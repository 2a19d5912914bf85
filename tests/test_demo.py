"""`parrotlet demo` (the README's main job) runs end to end and prints its comparison table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from parrotlet.demo import sample_chunks


def test_sample_document_splits_into_paragraph_chunks():
    chunks = sample_chunks()
    assert len(chunks) == 3
    assert chunks[0].startswith("For almost two centuries a small lighthouse stood on Gull Rock")
    assert chunks[-1].endswith("with oil and bread.")


@pytest.mark.slow
def test_demo_prints_results_and_the_comparison_table(default_model_dir: Path):
    result = subprocess.run(
        [sys.executable, "-m", "parrotlet.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "== chain summary, app-level: 3 calls as one graph" in out
    assert "== map-reduce summary, request-level: one call per request ==" in out
    assert "lighthouse" in out.lower()
    table = re.findall(
        r"^(chain summary|map-reduce summary)\s+([\d.]+)s\s+([\d.]+)s\s+([\d.]+)x$",
        out,
        re.MULTILINE,
    )
    assert [row[0] for row in table] == ["chain summary", "map-reduce summary"]
