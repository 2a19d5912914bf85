"""LLMEngine: add / step / abort over the scheduler, the model runner and the KV pool.

`step()` reads as schedule -> launch -> postprocess. With async scheduling (the default on CUDA)
the step it postprocesses is the previous one, so the host schedules and plans step N+1 while the
device runs step N. The app layer (ServeCore) drives it through the AsyncEngine and uses the
prefix operations (`pin_prefix`, `cached_prefix_len`) to share prompts.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from parrotlet.engine.block_manager import BlockManager
from parrotlet.engine.config import EngineConfig, check_device
from parrotlet.engine.detokenizer import IncrementalDetokenizer
from parrotlet.engine.guided_decoding import GuideCompiler, advance, forced_tokens
from parrotlet.engine.logprobs import TokenLogprob
from parrotlet.engine.model_runner import LaunchedStep, ModelRunner
from parrotlet.engine.models.config import ModelConfig
from parrotlet.engine.models.llama import LlamaForCausalLM
from parrotlet.engine.outputs import EngineStats, RequestOutput
from parrotlet.engine.sampling_params import SamplingParams
from parrotlet.engine.scheduler import ScheduledBatch, Scheduler
from parrotlet.engine.sequence import FinishReason, Sequence
from parrotlet_kernels.interface import AttentionSpec
from parrotlet_kernels.registry import get_attention_backend

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class PrefixPin:
    """A prefix held in the KV cache until `LLMEngine.unpin`; `num_tokens` are block-aligned."""

    pin_id: str
    block_ids: tuple[int, ...]
    num_tokens: int


class LLMEngine:
    """One model on one device, serving many requests by continuous batching.

    Not thread-safe: one thread drives add/step/abort (the AsyncEngine serializes them).
    """

    def __init__(self, config: EngineConfig, model: LlamaForCausalLM, tokenizer=None) -> None:
        self.config = config
        self.model_config: ModelConfig = model.config
        self.tokenizer = tokenizer
        self.device = resolve_device(config.device)
        self.max_model_len = min(
            config.max_model_len or self.model_config.max_position_embeddings,
            self.model_config.max_position_embeddings,
        )
        spec = self._attention_spec(next(model.parameters()).dtype)
        attention = get_attention_backend(
            _backend_name(config, spec), spec, spec.allocate_kv_cache()
        )
        self.blocks = BlockManager(
            spec.num_blocks, spec.block_size, config.cache.enable_prefix_caching
        )
        self.scheduler = Scheduler(config.scheduler, self.blocks)
        self.runner = ModelRunner(
            model,
            attention,
            shared_prefix_attention=config.shared_prefix_attention,
            min_shared_prefix_tokens=config.shared_prefix_min_tokens,
            cuda_graphs=config.cuda_graphs,
            max_num_seqs=config.scheduler.max_num_seqs,
            small_batch_linear=config.small_batch_linear,
            graph_decode_attention=config.graph_decode_attention,
            graph_prefix_tiles=config.graph_prefix_tiles,
            programmatic_launch=config.programmatic_launch,
            # no step is longer than the token budget, so no piece needs to be either
            piecewise_graph_tokens=min(
                config.piecewise_graph_tokens, config.scheduler.max_num_batched_tokens
            ),
        )
        self.async_scheduling = (
            config.async_scheduling
            if config.async_scheduling is not None
            else self.device.type == "cuda"
        )
        self._in_flight: tuple[ScheduledBatch, LaunchedStep] | None = None
        self.guides = GuideCompiler(
            tokenizer, self.model_config.eos_token_ids, self.model_config.vocab_size
        )
        self._requests: dict[str, tuple[Sequence, IncrementalDetokenizer | None]] = {}
        self._pins: dict[str, PrefixPin] = {}
        self._ids = itertools.count()
        self._counters = dict.fromkeys(
            ("computed", "prompt", "cached", "preemptions", "steps", "step_us", "device_wait_us"), 0
        )
        logger.info(
            "KV cache: %d blocks x %d tokens = %d tokens of capacity (%s, %s); attention: %s",
            spec.num_blocks,
            spec.block_size,
            self.capacity_tokens,
            spec.dtype,
            spec.device,
            type(attention).__name__,
        )

    @classmethod
    def from_config(cls, config: EngineConfig) -> LLMEngine:
        """Load the model and tokenizer named by `config.model` (None: the default model)."""
        from parrotlet.engine.models.default_model import resolve_model_path
        from parrotlet.engine.models.loader import load_model
        from parrotlet.engine.tokenizer import load_tokenizer

        path = resolve_model_path(config.model)
        device = resolve_device(config.device)
        model, _ = load_model(path, dtype=resolve_dtype(config), device=device)
        return cls(config, model, load_tokenizer(path))

    # ---- requests ------------------------------------------------------------------------
    def add_request(
        self,
        prompt: str | Seq[int],
        params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
        priority: int = 0,
        cache_namespace: str = "",
        group: str | None = None,
    ) -> str:
        """Queue a request (text is tokenized as is; chat templating is the caller's job).

        Lower `priority` runs first; requests of one `group` are admitted together; prefixes are
        shared only within one `cache_namespace`.
        """
        params = params or SamplingParams()
        token_ids = self._encode(prompt)
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already running")
        self._check_fits(token_ids, params, request_id)
        seq = Sequence(
            request_id, list(token_ids), params, next(self._ids), priority, cache_namespace, group
        )
        seq.max_len = min(len(token_ids) + params.max_tokens, self.max_model_len)
        if params.guide is not None:
            seq.matcher = self.guides.matcher(params.guide)
        detok = (
            IncrementalDetokenizer(self.tokenizer, seq.token_ids, params, self._eos_ids(params))
            if self.tokenizer is not None
            else None
        )
        self._requests[request_id] = (seq, detok)
        self.scheduler.add(seq)
        return request_id

    def abort(self, request_id: str) -> None:
        """Stop a request and free its blocks; unknown or finished ids are ignored."""
        entry = self._requests.pop(request_id, None)
        if entry is not None:
            self.scheduler.abort(entry[0])
            self.runner.release(entry[0])

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or self._in_flight is not None

    # ---- the step ------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedule and launch one batch, then postprocess a launched one (append its tokens,
        detokenize, finish): this batch, or with async scheduling the previous batch, whose
        tokens the device has produced meanwhile."""
        start = time.perf_counter()
        outputs = self._complete_host_dependent()
        batch = self.scheduler.schedule()
        outputs += [self._fail(seq) for seq in batch.failed]
        launched = (batch, self._launch(batch)) if batch.seqs else None
        if self.async_scheduling:
            launched, self._in_flight = self._in_flight, launched
        if launched is not None:
            outputs += self._complete(*launched)
        self._counters["step_us"] += round((time.perf_counter() - start) * 1e6)
        return outputs

    def generate(
        self, prompts: Seq[str | Seq[int]], params: SamplingParams | Seq[SamplingParams]
    ) -> list[RequestOutput]:
        """Run `prompts` to completion as one batch; outputs in prompt order."""
        per_prompt = [params] * len(prompts) if isinstance(params, SamplingParams) else params
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, per_prompt, strict=True)]
        final: dict[str, RequestOutput] = {}
        while self.has_unfinished():
            final.update((o.request_id, o) for o in self.step() if o.finished)
        return [final[i] for i in ids]

    # ---- prefix operations ---------------------------------------------------------------
    def cached_prefix_len(self, prompt: str | Seq[int], cache_namespace: str = "") -> int:
        """How many leading tokens of `prompt` are in the KV cache now (block-aligned)."""
        token_ids = self._encode(prompt)
        return len(self.blocks.match_prefix(token_ids, cache_namespace)) * self.blocks.block_size

    def pin_prefix(self, prompt: str | Seq[int], cache_namespace: str = "") -> str:
        """Queue a prefill of `prompt` whose full blocks stay cached until `unpin(pin_id)`.

        The prefill runs in the normal steps; `pin(pin_id)` tells when it is done, and `step()`
        reports a finished output for `pin_id` then.
        """
        pin_id = self.add_request(
            prompt, SamplingParams(max_tokens=0), cache_namespace=cache_namespace
        )
        seq = self._requests[pin_id][0]
        seq.keep_prefix = True
        return pin_id

    def pin(self, pin_id: str) -> PrefixPin | None:
        """The pinned prefix, once its prefill has finished (None before)."""
        return self._pins.get(pin_id)

    def unpin(self, pin_id: str) -> None:
        """Release a pinned prefix (its blocks stay cached until evicted); cancels a queued pin."""
        pin = self._pins.pop(pin_id, None)
        if pin is not None:
            self.blocks.release(pin.block_ids)
        else:
            self.abort(pin_id)

    # ---- introspection -------------------------------------------------------------------
    @property
    def capacity_tokens(self) -> int:
        return self.blocks.num_blocks * self.blocks.block_size

    def stats(self) -> EngineStats:
        c, graphs, pieces = self._counters, self.runner.graphs, self.runner.pieces
        return EngineStats(
            num_waiting=self.scheduler.num_waiting,
            num_running=self.scheduler.num_running,
            num_blocks=self.blocks.num_blocks,
            num_used_blocks=self.blocks.num_used_blocks,
            block_size=self.blocks.block_size,
            num_computed_tokens=c["computed"],
            num_prompt_tokens=c["prompt"],
            num_cached_prompt_tokens=c["cached"],
            num_preemptions=c["preemptions"],
            num_steps=c["steps"],
            num_graph_steps=graphs.num_replays if graphs else 0,
            num_tiled_steps=graphs.num_tiled_replays if graphs else 0,
            num_piecewise_steps=pieces.replays if pieces else 0,
            step_us=c["step_us"],
            device_wait_us=c["device_wait_us"],
        )

    # ---- internals -----------------------------------------------------------------------
    def _complete_host_dependent(self) -> list[RequestOutput]:
        """With async scheduling, postprocess the step in flight now when one of its sequences
        `needs_known_tokens` (guided): such steps are not overlapped."""
        if self._in_flight is None or not any(
            s.needs_known_tokens for s in self._in_flight[0].seqs
        ):
            return []
        launched, self._in_flight = self._in_flight, None
        return self._complete(*launched)

    def _launch(self, batch: ScheduledBatch) -> LaunchedStep:
        """Queue the batch on the device; its tokens count as computed from now on, and each
        sampled token is PENDING in its sequence until `_complete` reads it."""
        for seq in batch.admitted:
            self._counters["prompt"] += seq.num_prompt_tokens
            self._counters["cached"] += seq.num_cached_tokens
        launched = self.runner.launch(batch)
        self._counters["steps"] += 1
        self._counters["computed"] += batch.num_tokens
        self._counters["preemptions"] += len(batch.preempted)
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens, strict=True):
            seq.num_computed_tokens += num_new
        for i in launched.samplers:
            batch.seqs[i].add_pending()
        return launched

    def _complete(self, batch: ScheduledBatch, launched: LaunchedStep) -> list[RequestOutput]:
        """Read a launched batch's tokens and postprocess each sequence still running."""
        outputs = []
        start = time.perf_counter()
        tokens = launched.tokens()
        self._counters["device_wait_us"] += round((time.perf_counter() - start) * 1e6)
        logprobs = launched.token_logprobs()
        for seq, caught_up, token, logprob in zip(
            batch.seqs, launched.caught_up, tokens, logprobs, strict=True
        ):
            if seq.is_finished:  # aborted, or stopped by a token of an earlier step
                continue
            if token is not None:
                seq.resolve_pending(token)
            self.blocks.cache_full_blocks(seq)
            output = self._postprocess(seq, caught_up, token, logprob)
            if output is not None:
                outputs.append(output)
        return outputs

    def _postprocess(
        self, seq: Sequence, caught_up: bool, token: int | None, logprob: TokenLogprob | None
    ) -> RequestOutput | None:
        if not caught_up:
            return None  # a prefill chunk: nothing to report yet
        if seq.keep_prefix:
            self._finish_pin(seq)
            return self._output(seq, (), "", None)
        detok = self._requests[seq.request_id][1]
        if token is None:  # max_tokens == 0: the prefill was all there was to do
            delta, reason, new = "", FinishReason.LENGTH, ()
        else:
            delta, reason = self._check_stop(seq, token, detok)
            new = (token,)
            if reason is None and seq.matcher is not None:
                forced, forced_delta, reason = self._advance_guide(seq, token, detok)
                new, delta = new + forced, delta + forced_delta
        if reason is not None:
            self._finish(seq, reason)
            if detok is not None and reason is FinishReason.LENGTH:
                delta += detok.finish("length").delta
        return self._output(seq, new, delta, detok, () if logprob is None else (logprob,))

    def _advance_guide(
        self, seq: Sequence, token: int, detok: IncrementalDetokenizer | None
    ) -> tuple[tuple[int, ...], str, FinishReason | None]:
        """Feed the sampled token to the sequence's guide, then append the tokens the guide
        forces next (jump-forward; the next step computes them): (forced tokens, their text,
        the finish reason: STOP once the guided text is complete)."""
        if advance(seq.matcher, token):
            return (), "", FinishReason.STOP
        if not self.config.guided_jump_forward or seq.params.logprobs is not None:
            return (), "", None  # with logprobs, every token is sampled to have its own
        room = (seq.max_len or self.max_model_len) - seq.num_known_tokens
        forced, delta, reason = [], "", None
        for forced_token in forced_tokens(seq.matcher, room):
            seq.token_ids.append(forced_token)
            forced.append(forced_token)
            text, reason = self._check_stop(seq, forced_token, detok)
            delta += text
            if reason is not None:
                break
        if forced:
            self.runner.counts.add(seq, forced)  # penalties count them like sampled ones
        if reason is None and seq.matcher.is_stopped():
            reason = FinishReason.STOP
        return tuple(forced), delta, reason

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        seq.drop_pending()
        self.scheduler.finish(seq, reason)
        self._requests.pop(seq.request_id)
        self.runner.release(seq)

    def _check_stop(
        self, seq: Sequence, token: int, detok: IncrementalDetokenizer | None
    ) -> tuple[str, FinishReason | None]:
        if detok is not None:
            step = detok.step(token)
            if step.finished:
                return step.delta, FinishReason.STOP
            delta = step.delta
        else:
            delta = ""
            stops = token in seq.params.stop_token_ids or token in self._eos_ids(seq.params)
            if stops and seq.num_output_tokens > seq.params.min_tokens:
                return delta, FinishReason.STOP
        if seq.max_len is not None and seq.num_known_tokens >= seq.max_len:
            return delta, FinishReason.LENGTH
        return delta, None

    def _output(
        self,
        seq: Sequence,
        new: tuple[int, ...],
        delta: str,
        detok: IncrementalDetokenizer | None,
        logprobs: tuple[TokenLogprob, ...] = (),
    ) -> RequestOutput:
        return RequestOutput(
            request_id=seq.request_id,
            new_token_ids=new,
            text_delta=delta,
            token_ids=tuple(seq.output_token_ids),
            text=detok.text if detok is not None else "",
            finished=seq.is_finished,
            finish_reason=seq.finish_reason,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_tokens,
            new_logprobs=logprobs,
        )

    def _finish_pin(self, seq: Sequence) -> None:
        """Keep the pin's full blocks referenced; give back the partial tail block."""
        num_full = seq.num_prompt_tokens // self.blocks.block_size
        self.blocks.release(seq.block_ids[num_full:])
        kept = tuple(seq.block_ids[:num_full])
        seq.block_ids = []
        self._finish(seq, FinishReason.STOP)
        self._pins[seq.request_id] = PrefixPin(
            seq.request_id, kept, num_full * self.blocks.block_size
        )

    def _fail(self, seq: Sequence) -> RequestOutput:
        self._requests.pop(seq.request_id, None)
        message = (
            f"request {seq.request_id!r} needs more KV blocks than the pool can give "
            f"({self.blocks.num_blocks} blocks, others pinned)"
        )
        return RequestOutput(
            seq.request_id,
            (),
            "",
            (),
            "",
            True,
            FinishReason.ERROR,
            seq.num_prompt_tokens,
            0,
            error=message,
        )

    def _encode(self, prompt: str | Seq[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt is text but this engine has no tokenizer; pass token ids")
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        token_ids = list(prompt)
        vocab = self.model_config.vocab_size
        bad = [t for t in token_ids if not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token ids must be ints in [0, {vocab}), got {bad[:5]}")
        return token_ids

    def _check_fits(self, token_ids: list[int], params: SamplingParams, request_id: str) -> None:
        if not token_ids:
            raise ValueError(f"request {request_id!r}: prompt is empty")
        vocab = self.model_config.vocab_size
        outside = [t for t, _ in params.logit_bias if t >= vocab]
        if outside:
            raise ValueError(f"logit_bias has token ids outside [0, {vocab}): {outside[:5]}")
        total = len(token_ids) + params.max_tokens
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"request {request_id!r}: prompt has {len(token_ids)} tokens, the model's "
                f"context is {self.max_model_len}"
            )
        if total > self.capacity_tokens:
            raise ValueError(
                f"request {request_id!r}: prompt + max_tokens = {total} tokens exceeds the KV "
                f"cache capacity of {self.capacity_tokens} tokens"
            )

    def _eos_ids(self, params: SamplingParams) -> tuple[int, ...]:
        return () if params.ignore_eos else self.model_config.eos_token_ids

    def _attention_spec(self, dtype: torch.dtype) -> AttentionSpec:
        mc, cc = self.model_config, self.config.cache
        bytes_per_block = (
            mc.num_layers * 2 * cc.block_size * mc.num_kv_heads * mc.head_dim * dtype.itemsize
        )
        num_blocks = cc.num_blocks or _pool_bytes(self.config, self.device) // bytes_per_block
        if num_blocks < 1:
            raise ValueError("the KV cache memory budget is smaller than one block")
        return AttentionSpec(
            mc.num_layers,
            mc.num_heads,
            mc.num_kv_heads,
            mc.head_dim,
            cc.block_size,
            num_blocks,
            dtype,
            self.device,
        )


def resolve_device(device: str) -> torch.device:
    """`device` (cpu, cuda or cuda:N) as a torch.device, or a ValueError saying why this machine
    cannot run on it."""
    check_device(device)
    resolved = torch.device(device)
    if resolved.type != "cuda":
        return resolved
    if not torch.cuda.is_available():
        reason = "is built without CUDA" if torch.version.cuda is None else "sees no CUDA device"
        raise ValueError(f"device {device!r}: this torch ({torch.__version__}) {reason}")
    count = torch.cuda.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise ValueError(f"device {device!r}: only {count} CUDA device(s) here")
    return resolved


def resolve_dtype(config: EngineConfig) -> torch.dtype:
    """ "auto" is float32 on CPU and bfloat16 on CUDA."""
    if config.dtype == "auto":
        return torch.float32 if config.device == "cpu" else torch.bfloat16
    return _DTYPES[config.dtype]


def _backend_name(config: EngineConfig, spec: AttentionSpec) -> str:
    """The configured backend; "auto" is flashinfer where it is installed and has kernels for
    the spec (CUDA, float16 / bfloat16, head_dim 64 / 128 / 256), else the torch reference."""
    if config.attention_backend != "auto":
        return config.attention_backend
    if (
        config.device == "cpu"
        or spec.dtype not in (torch.float16, torch.bfloat16)
        or spec.head_dim not in (64, 128, 256)
    ):
        return "reference"
    try:
        import flashinfer  # noqa: F401
    except ImportError:
        return "reference"
    return "flashinfer"


def _pool_bytes(config: EngineConfig, device: torch.device) -> int:
    """The KV pool's memory budget: a fraction of free GPU memory, or the CPU setting."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * config.cache.gpu_memory_utilization)
    return config.cache.cpu_kv_cache_bytes
