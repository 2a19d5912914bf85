"""The engine's greedy tokens equal transformers generate: batched, chunked, cached, preempted."""

from __future__ import annotations

import pytest

from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.engine.sequence import FinishReason

from .helpers import hf_greedy, make_checkpoint, make_engine, make_prompts

MAX_TOKENS = 12
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return folder, make_checkpoint(request.param, folder)


def outputs(engine, prompts, params=GREEDY) -> list[list[int]]:
    return [list(o.token_ids) for o in engine.generate(prompts, params)]


def expected(hf_model, prompts) -> list[list[int]]:
    return [hf_greedy(hf_model, p, MAX_TOKENS) for p in prompts]


def test_batched_prompts_of_different_lengths_match_transformers(checkpoint):
    folder, hf_model = checkpoint
    prompts = make_prompts([3, 17, 40, 64])
    assert outputs(make_engine(folder), prompts) == expected(hf_model, prompts)


def test_chunked_prefill_matches_transformers(checkpoint):
    folder, hf_model = checkpoint
    prompts = make_prompts([5, 50, 37])
    engine = make_engine(folder, budget=8)
    assert outputs(engine, prompts) == expected(hf_model, prompts)
    assert engine.stats().num_steps > 50 // 8


@pytest.mark.parametrize("shared_prefix_attention", [True, False])
def test_shared_cached_prefix_matches_transformers(checkpoint, shared_prefix_attention):
    folder, hf_model = checkpoint
    prefix = make_prompts([48], seed=7)[0]
    prompts = [prefix + s for s in make_prompts([5, 9, 20, 1], seed=8)]
    engine = make_engine(
        folder, shared_prefix_attention=shared_prefix_attention, shared_prefix_min_tokens=0
    )
    first = outputs(engine, prompts[:1])
    rest = outputs(engine, prompts[1:])  # reuse the first's 48 cached prefix tokens
    assert first + rest == expected(hf_model, prompts)
    assert engine.stats().num_cached_prompt_tokens == 3 * 48


def test_prefix_reuse_computes_only_the_suffix(checkpoint):
    folder, hf_model = checkpoint
    prefix = make_prompts([200], seed=3)[0]
    a, b = prefix + [5, 6, 7], prefix + [9, 10, 11, 12]
    engine = make_engine(folder)
    out_a = outputs(engine, [a])
    before = engine.stats().num_computed_tokens
    out_b = outputs(engine, [b])
    # 200 = 12 full blocks of 16 (192 tokens) + 8: only 8 + 4 prompt tokens and the decodes run.
    assert engine.stats().num_computed_tokens - before == (len(b) - 192) + (MAX_TOKENS - 1)
    assert engine.generate([b], GREEDY)[0].num_cached_tokens == 192
    assert out_a + out_b == expected(hf_model, [a, b])


def test_preemption_keeps_every_output_identical(checkpoint):
    folder, hf_model = checkpoint
    prompts = make_prompts([30, 30, 30, 30, 30, 30], seed=5)
    # Each request needs ceil((30 + 12) / 4) = 11 blocks; 24 blocks hold two at a time.
    engine = make_engine(folder, num_blocks=24, block_size=4)
    assert outputs(engine, prompts) == expected(hf_model, prompts)
    assert engine.stats().num_preemptions > 0
    assert engine.blocks.num_free_blocks == 24


def test_pin_prefix_keeps_it_cached_until_unpinned(checkpoint):
    folder, _ = checkpoint
    prefix = make_prompts([40], seed=11)[0]
    engine = make_engine(folder, num_blocks=8, block_size=8)
    pin_id = engine.pin_prefix(prefix)
    assert engine.pin(pin_id) is None
    while engine.has_unfinished():
        engine.step()
    pin = engine.pin(pin_id)
    assert pin is not None and pin.num_tokens == 40 and len(pin.block_ids) == 5
    assert engine.cached_prefix_len(prefix + [1, 2]) == 40
    # Other work cannot evict the pinned blocks: 3 free blocks are all a request may use.
    with pytest.raises(ValueError, match="exceeds the KV cache capacity"):
        engine.add_request([1] * 70, GREEDY)
    outputs(engine, make_prompts([10], seed=12))
    assert engine.cached_prefix_len(prefix + [1, 2]) == 40
    engine.unpin(pin_id)
    assert engine.blocks.num_free_blocks == 8


def test_requests_that_cannot_run_are_rejected_with_the_reason(checkpoint):
    folder, _ = checkpoint
    engine = make_engine(folder, num_blocks=4, block_size=4, max_model_len=64)
    with pytest.raises(ValueError, match="model's context is 64"):
        engine.add_request([1] * 64, GREEDY)
    with pytest.raises(ValueError, match="KV cache capacity of 16"):
        engine.add_request([1] * 10, GREEDY)
    with pytest.raises(ValueError, match="token ids must be ints"):
        engine.add_request([1, 256], GREEDY)
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.add_request([], GREEDY)


def test_stop_token_ids_and_abort(checkpoint):
    folder, hf_model = checkpoint
    prompt = make_prompts([9], seed=13)[0]
    reference = hf_greedy(hf_model, prompt, MAX_TOKENS)
    stop_at = reference[4]
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, stop_token_ids=[stop_at])
    engine = make_engine(folder)
    out = engine.generate([prompt], params)[0]
    assert list(out.token_ids) == reference[: reference.index(stop_at) + 1]
    assert out.finish_reason is FinishReason.STOP
    rid = engine.add_request(prompt, GREEDY)
    engine.step()
    engine.abort(rid)
    assert not engine.has_unfinished()
    assert all(c == 0 for c in engine.blocks.ref_counts)


def test_prefix_groups_cover_exactly_the_shared_blocks(checkpoint):
    folder, _ = checkpoint
    engine = make_engine(folder, block_size=4, shared_prefix_min_tokens=8)
    prefix = make_prompts([13], seed=21)[0]  # 3 full blocks of 4 + 1 token
    engine.generate([prefix + [1]], SamplingParams(max_tokens=1))  # cache the prefix blocks
    for tail in ([2, 3], [4, 5, 6], [7]):
        engine.add_request(prefix + tail, GREEDY)
    engine.add_request(make_prompts([9], seed=22)[0], GREEDY)  # shares nothing
    batch = engine.scheduler.schedule()
    _, _, metadata = engine.runner.prepare(batch)
    shared = batch.seqs[0].block_ids[:3]
    assert [s.block_ids[:3] for s in batch.seqs[:3]] == [shared] * 3
    assert [(g.seq_indices, g.num_blocks) for g in metadata.prefix_groups] == [((0, 1, 2), 3)]
