"""What guided decoding (structured outputs) costs a decode step, and what jump-forward saves.

Mask cost: the same batch of greedy requests runs free and guided (a regex that every step must
check but that the 48 tokens never complete), in interleaved rounds; the step time is the run's
wall time over its 48 steps; also the mask alone (`mask_logits` for the batch's rows).
Jump-forward: one greedy request for a JSON object of four fixed keys, on an engine with
`guided_jump_forward` and one without: steps, seconds, and whether the texts are equal.
Default model on CPU (the GPU image needs the llguidance wheel first). Prints one summary line
and writes benchmarks/results/guided_decoding.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from parrotlet.engine.config import EngineConfig
from parrotlet.engine.engine import LLMEngine
from parrotlet.engine.guide import Guide
from parrotlet.engine.guided_decoding import mask_logits
from parrotlet.engine.sampling_params import SamplingParams

STEPS = 48
GUIDE = Guide("regex", r"[A-Za-z ,.\n]{1,400}")  # every token checked, never complete in 48
PROMPT = [{"role": "user", "content": "Write a long story about a cat."}]


def step_ms(engine: LLMEngine, prompt: str, batch: int, guide: Guide | None) -> float:
    params = SamplingParams(temperature=0.0, max_tokens=STEPS, ignore_eos=True, guide=guide)
    start = time.perf_counter()
    outs = engine.generate([prompt] * batch, params)
    assert all(len(o.token_ids) == STEPS for o in outs)
    return (time.perf_counter() - start) * 1000 / STEPS


def mask_ms(engine: LLMEngine, batch: int) -> float:
    """`mask_logits` for `batch` guided rows, each step after every row took one more token of
    the same text (a matcher asked twice in one state answers from its cache)."""
    matchers = [engine.guides.matcher(GUIDE) for _ in range(batch)]
    logits = torch.randn(batch, engine.model_config.vocab_size)
    tokens = engine.tokenizer.encode("Once upon a time there was a cat named Tom who lived in a "
                                     "small house", add_special_tokens=False)  # fmt: skip
    total = 0.0
    for token in tokens:
        start = time.perf_counter()
        mask_logits(logits, matchers)
        total += time.perf_counter() - start
        for matcher in matchers:
            assert matcher.consume_token(token)
    return total * 1000 / len(tokens)


PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
          "city": {"type": "string"}, "married": {"type": "boolean"}},
          "required": ["name", "age", "city", "married"]}  # fmt: skip
PERSON_PROMPT = [{"role": "user", "content": "Give me a person with a name, an age and a city "
                  "as JSON."}]  # fmt: skip


def jump_forward(rounds: int) -> dict:
    """Steps and medians of seconds for the PERSON object with and without jump-forward."""
    engines = {jump: LLMEngine.from_config(EngineConfig(guided_jump_forward=jump))
               for jump in (True, False)}  # fmt: skip
    tokenizer = engines[True].tokenizer
    prompt = tokenizer.apply_chat_template(PERSON_PROMPT, add_generation_prompt=True,
                                           tokenize=False)  # fmt: skip
    params = SamplingParams(temperature=0.0, max_tokens=80, guide=Guide.json(PERSON))
    runs: dict[bool, dict] = {jump: {"seconds": []} for jump in engines}
    for _ in range(rounds + 1):  # the first round warms up
        for jump, engine in engines.items():
            steps = engine.stats().num_steps
            start = time.perf_counter()
            [out] = engine.generate([prompt], params)
            runs[jump]["seconds"].append(time.perf_counter() - start)
            runs[jump].update(steps=engine.stats().num_steps - steps, text=out.text,
                              tokens=len(out.token_ids))  # fmt: skip
    for run in runs.values():
        run["median_s"] = statistics.median(run["seconds"][1:])
    return {
        "on": runs[True],
        "off": runs[False],
        "same_text": runs[True]["text"] == runs[False]["text"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    engine = LLMEngine.from_config(EngineConfig())
    prompt = engine.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True,
                                                  tokenize=False)  # fmt: skip
    rows = []
    for batch in args.batches:
        step_ms(engine, prompt, batch, GUIDE)  # warm-up (and the guide tokenizer's build)
        times: dict[str, list[float]] = {"free": [], "guided": []}
        for _ in range(args.rounds):
            times["free"].append(step_ms(engine, prompt, batch, None))
            times["guided"].append(step_ms(engine, prompt, batch, GUIDE))
        free, guided = (statistics.median(times[k]) for k in ("free", "guided"))
        rows.append({"batch": batch, "free_ms": free, "guided_ms": guided,
                     "mask_ms": mask_ms(engine, batch), "runs": times})  # fmt: skip
    del engine
    jump = jump_forward(args.rounds)
    device = "cpu" if torch.cuda.device_count() == 0 else torch.cuda.get_device_name()
    on, off = jump["on"], jump["off"]
    masks = "; ".join(
        f"batch {r['batch']}: guided {r['guided_ms']:.1f} vs free "
        f"{r['free_ms']:.1f} ms a step (mask {r['mask_ms']:.2f} ms)"
        for r in rows
    )
    print(f"{masks}; jump-forward: {on['steps']} vs {off['steps']} steps for {on['tokens']} "
          f"tokens, {on['median_s']:.2f} vs {off['median_s']:.2f} s, same text: "
          f"{jump['same_text']} [{device}]")  # fmt: skip
    out = Path(__file__).parent / "results" / "guided_decoding.json"
    report = {"device": device, "steps": STEPS, "rows": rows, "jump_forward": jump}
    out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
