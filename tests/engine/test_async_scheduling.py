"""Async scheduling (step N+1 launched before step N's tokens are read) changes no output: every
request's stream of tokens and finish reason equals the synchronous engine's, through chunked
prefill, stop tokens, length limits, preemption, aborts, pins and prefix caching."""

from __future__ import annotations

import pytest

from parrotlet.engine.engine import LLMEngine
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.engine.sequence import FinishReason

from .helpers import hf_greedy, make_checkpoint, make_engine, make_prompts


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama_async")
    return folder, make_checkpoint("llama", folder)


def greedy(max_tokens: int, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kwargs)


def run(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]], abort=()):
    """Each request's stream [(new token ids, finished, finish reason)], stepping to the end;
    the ids in `abort` are aborted after the second step."""
    for rid, (prompt, params) in requests.items():
        engine.add_request(prompt, params, request_id=rid)
    streams: dict[str, list] = {rid: [] for rid in requests}
    steps = 0
    while engine.has_unfinished():
        for out in engine.step():
            streams[out.request_id].append((out.new_token_ids, out.finished, out.finish_reason))
        steps += 1
        if steps == 2:
            for rid in abort:
                engine.abort(rid)
    return streams


def both(folder, requests, abort=(), **engine_kwargs):
    """The streams of the synchronous and the async engine, and the two engines."""
    engines = [make_engine(folder, async_scheduling=a, **engine_kwargs) for a in (False, True)]
    streams = [run(e, requests, abort) for e in engines]
    for engine in engines:
        assert all(c == 0 for c in engine.blocks.ref_counts), "a finished request kept a block"
    return streams, engines


def test_async_equals_sync_with_chunks_stops_and_limits(checkpoint):
    folder, hf_model = checkpoint
    prompts = make_prompts([3, 17, 40, 64, 5, 90], seed=31)
    stop_at = hf_greedy(hf_model, prompts[2], 12)[3]
    requests = {
        "a": (prompts[0], greedy(12)),
        "b": (prompts[1], greedy(1)),
        "c": (prompts[2], greedy(12, stop_token_ids=[stop_at])),
        "d": (prompts[3], greedy(12)),
        "e": (prompts[4], greedy(0)),
        "f": (prompts[5], greedy(50)),  # stops at max_model_len = 96: 6 tokens
    }
    (sync, async_), engines = both(folder, requests, budget=16, max_model_len=96)

    assert async_ == sync
    assert [t for new, _, _ in sync["a"] for t in new] == hf_greedy(hf_model, prompts[0], 12)
    assert sync["c"][-1][2] is FinishReason.STOP and len(sync["c"]) == 4
    assert sum(len(new) for new, _, _ in sync["f"]) == 6 and sync["f"][-1][2] == "length"
    assert sync["e"] == [((), True, FinishReason.LENGTH)]
    # Only the stop-token finish ran ahead: one token computed past it, never one past a length.
    computed = [e.stats().num_computed_tokens for e in engines]
    assert computed[1] - computed[0] == 1


def test_async_delivers_each_token_one_step_later(checkpoint):
    folder, _ = checkpoint
    engine = make_engine(folder, async_scheduling=True)
    engine.add_request(make_prompts([7], seed=32)[0], greedy(3), request_id="x")
    first = engine.step()  # launches the prefill; nothing has been read yet
    per_step = [first] + [engine.step() for _ in range(3)]

    assert first == []
    assert [len(outs) for outs in per_step] == [0, 1, 1, 1]
    assert per_step[-1][0].finished and not engine.has_unfinished()


def test_async_equals_sync_under_preemption(checkpoint):
    folder, _ = checkpoint
    prompts = make_prompts([30] * 6, seed=33)
    requests = {f"r{i}": (p, greedy(12)) for i, p in enumerate(prompts)}
    (sync, async_), engines = both(folder, requests, num_blocks=24, block_size=4)

    assert async_ == sync
    assert engines[1].stats().num_preemptions > 0


def test_async_abort_while_a_step_is_in_flight(checkpoint):
    folder, _ = checkpoint
    prompts = make_prompts([12, 20], seed=34)
    requests = {"keep": (prompts[0], greedy(8)), "drop": (prompts[1], greedy(8))}
    (sync, async_), engines = both(folder, requests, abort=("drop",))

    assert async_["keep"] == sync["keep"]
    assert not async_["drop"][-1][1]  # aborted before it finished: no final output
    assert all(e.blocks.num_free_blocks == e.blocks.num_blocks for e in engines)


def test_async_pins_and_prefix_cache_match_sync(checkpoint):
    folder, _ = checkpoint
    prefix = make_prompts([40], seed=35)[0]
    tails = make_prompts([3, 9, 1], seed=36)
    counts = []
    results = []
    for async_scheduling in (False, True):
        engine = make_engine(folder, block_size=8, async_scheduling=async_scheduling)
        pin_id = engine.pin_prefix(prefix)
        while engine.has_unfinished():
            engine.step()
        pin = engine.pin(pin_id)
        assert pin is not None and pin.num_tokens == 40
        requests = {f"t{i}": (prefix + t, greedy(6)) for i, t in enumerate(tails)}
        results.append(run(engine, requests))
        t0_output = [t for new, _, _ in results[-1]["t0"] for t in new]
        again = engine.generate([prefix + tails[0] + t0_output[:5] + [1]], greedy(2))[0]
        counts.append((engine.stats().num_cached_prompt_tokens, again.num_cached_tokens))
        engine.unpin(pin_id)

    assert results[1] == results[0]
    # the three reuse the 40 pinned tokens; the fourth also t0's blocks of its own output
    assert counts == [(3 * 40 + 48, 48)] * 2
