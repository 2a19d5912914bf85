"""Engine throughput on CPU: parrotlet vs `transformers` generate called once per request.

Runs the default model (SmolLM2-135M-Instruct) with N concurrent requests of fixed output length
(EOS ignored) through the parrotlet engine (one continuous batch) and through transformers'
`generate`, one request after another, as an app calling it per request would. Prints one summary
line and writes benchmarks/results/engine_throughput.json.

    python benchmarks/engine_throughput.py [--requests 1 16] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM

from parrotlet.engine.config import EngineConfig
from parrotlet.engine.engine import LLMEngine
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.engine.tokenizer import encode_prompt

QUESTIONS = [
    "What is the capital of France?",
    "Name three colors of the rainbow.",
    "Why is the sky blue?",
    "Write a haiku about autumn.",
    "What does a baker do?",
    "Explain photosynthesis briefly.",
    "Who wrote Romeo and Juliet?",
    "What is 12 times 12?",
    "Give a tip for learning to cook.",
    "What is a prime number?",
    "Describe a cat in one line.",
    "How do airplanes fly?",
    "What is the largest ocean?",
    "Suggest a name for a dog.",
    "What is rain made of?",
    "Why do we sleep?",
]


def prompts(engine: LLMEngine, n: int) -> list[list[int]]:
    return [
        encode_prompt(engine.tokenizer, QUESTIONS[i % len(QUESTIONS)], chat=True) for i in range(n)
    ]


def run_parrotlet(engine: LLMEngine, batch: list[list[int]], max_tokens: int) -> tuple[float, list]:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    outs = engine.generate(batch, params)
    return time.perf_counter() - start, [list(o.token_ids) for o in outs]


@torch.inference_mode()
def run_transformers(model, batch: list[list[int]], max_tokens: int) -> tuple[float, list]:
    outs = []
    start = time.perf_counter()
    for p in batch:
        ids = torch.tensor([p])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_tokens,
            pad_token_id=0,
        )
        outs.append(out[0, len(p) :].tolist())
    return time.perf_counter() - start, outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/engine_throughput.json")
    args = parser.parse_args()

    engine = LLMEngine.from_config(EngineConfig())
    hf = AutoModelForCausalLM.from_pretrained(engine.config.model or _default()).eval()
    hf.generation_config.eos_token_id = None  # fixed output lengths, like ignore_eos
    run_parrotlet(engine, prompts(engine, 2), 4)  # warm up both
    run_transformers(hf, prompts(engine, 1), 4)
    rows = []
    for n in args.requests:
        batch = prompts(engine, n)
        t_ours, ours = run_parrotlet(engine, batch, args.max_tokens)
        t_hf, theirs = run_transformers(hf, batch, args.max_tokens)
        tokens = n * args.max_tokens
        rows.append(
            {
                "requests": n,
                "output_tokens": tokens,
                "parrotlet_s": round(t_ours, 3),
                "transformers_s": round(t_hf, 3),
                "parrotlet_tok_s": round(tokens / t_ours, 1),
                "transformers_tok_s": round(tokens / t_hf, 1),
                "speedup": round(t_hf / t_ours, 2),
                "identical_outputs": sum(a == b for a, b in zip(ours, theirs, strict=True)),
            }
        )
    result = {
        "benchmark": "engine_throughput",
        "model": "SmolLM2-135M-Instruct (fp32)",
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads",
        "date": time.strftime("%Y-%m-%d"),
        "max_tokens": args.max_tokens,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        "engine_throughput: "
        + "; ".join(
            f"{r['requests']} req: {r['speedup']}x transformers "
            f"({r['parrotlet_tok_s']} vs {r['transformers_tok_s']} tok/s, "
            f"{r['identical_outputs']}/{r['requests']} identical)"
            for r in rows
        )
    )


def _default() -> str:
    from parrotlet.engine.models.default_model import default_model_path

    return str(default_model_path())


if __name__ == "__main__":
    main()
