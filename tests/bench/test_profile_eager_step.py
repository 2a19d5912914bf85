"""benchmarks/profile_eager_step.py on CPU: its steps carry exactly the chunk and the rows."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from parrotlet.bench.setup import random_model

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "profile_eager_step.py"


def load_script():
    sys.path.insert(0, str(SCRIPT.parent))  # it imports its sibling engine_decode
    try:
        spec = importlib.util.spec_from_file_location("profile_eager_step", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def test_mixed_steps_time_steps_of_one_chunk_plus_the_decode_rows():
    script = load_script()
    model = random_model("tiny-random", 512, torch.float32, torch.device("cpu"))
    engine = script.make_engine(model, "cpu", chunk=32, rows=3, bulk=1, path="piecewise")
    row = script.mixed_steps(engine, chunk=32, rows=3, bulk=1)  # asserts 35 tokens a step
    assert (row["chunk"], row["decode_rows"], row["piecewise_steps"]) == (32, 3, 0)
    assert 0 < row["launch_ms"] <= row["step_ms"]  # the launch is part of the step
    assert "kernels_ms" not in row  # device time only on CUDA, and pieces (so 0 above)
    stats = engine.stats()
    assert stats.num_prompt_tokens == 3 * 128 + script.BULK_PROMPT
