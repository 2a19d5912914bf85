"""ModelRunner: turns a ScheduledBatch into one forward pass and the sampled next tokens.

It builds the step's AttentionMetadata once (one host->device copy per step), finds groups of
sequences that share a prefix of KV blocks for the shared-prefix attention path, runs the model and
samples the sequences that caught up with their last token. `launch` only queues that work: the
tokens come back through `LaunchedStep.tokens()`, so the engine can schedule the next step while
the device runs this one; an input token still being sampled is read from the previous step's
device tensor. On CUDA with flashinfer, decode-only steps replay a CUDA graph (cuda_graphs.py)
and the model runs fused kernels (flashinfer's elementwise ones, parrotlet's small-batch linear);
on CUDA the other steps of up to `piecewise_graph_tokens` tokens replay everything but attention
as CUDA graphs (piecewise_graphs.py).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from functools import partial

import torch

from parrotlet.engine.cuda_graphs import CudaGraphRunner, PaddedDecode
from parrotlet.engine.guided_decoding import mask_logits
from parrotlet.engine.logprobs import TokenLogprob, unpack
from parrotlet.engine.models.llama import FusedKernels, LlamaForCausalLM, load_fused_kernels
from parrotlet.engine.penalties import TokenCounts, apply_logit_bias, apply_min_tokens
from parrotlet.engine.piecewise_graphs import PiecewiseGraphRunner
from parrotlet.engine.sampler import Sampler, make_generator, to_device, token_logprobs
from parrotlet.engine.scheduler import ScheduledBatch
from parrotlet.engine.sequence import Sequence
from parrotlet_kernels import triton_linear
from parrotlet_kernels.interface import AttentionBackend, AttentionMetadata, PrefixGroup


@dataclass(frozen=True)
class LaunchedStep:
    """A step whose work is queued on the device; `tokens()` waits for its sampled tokens.

    `caught_up[i]`: sequence i's computed tokens reach its last token this step (its prompt is
    done); `samplers` are those of them that sample (max_tokens > 0), in the order of `sampled`.
    """

    caught_up: tuple[bool, ...]
    samplers: tuple[int, ...]
    sampled: torch.Tensor | None  # [len(samplers)] int64 on the host, valid once `ready` fired
    ready: torch.cuda.Event | None  # None: `sampled` is valid now (CPU)
    # sampler.token_logprobs of the samplers' rows (on the host, like `sampled`), and how many
    # most likely tokens each lists (None: it asked for no logprobs); None if none asked
    logprobs: tuple[torch.Tensor, torch.Tensor, tuple[int | None, ...]] | None = None

    def tokens(self) -> list[int | None]:
        """The sampled token of each sequence of the batch, None where none was due."""
        out: list[int | None] = [None] * len(self.caught_up)
        if self.sampled is None:
            return out
        if self.ready is not None:
            self.ready.synchronize()
        for i, token in zip(self.samplers, self.sampled.tolist(), strict=True):
            out[i] = token
        return out

    def token_logprobs(self) -> list[TokenLogprob | None]:
        """Each sequence's sampled token with its logprobs, None where none were asked for or
        no token was due (call after tokens())."""
        out: list[TokenLogprob | None] = [None] * len(self.caught_up)
        if self.logprobs is None or self.sampled is None:
            return out
        values, ids, nums = self.logprobs
        rows = [r for r, k in enumerate(nums) if k is not None]
        found = unpack(values[rows].tolist(), ids[rows].tolist(), self.sampled[rows].tolist(),
                       [nums[r] for r in rows])  # fmt: skip
        for r, logprob in zip(rows, found, strict=True):
            out[self.samplers[r]] = logprob
        return out


@dataclass(frozen=True)
class _Sampled:
    """The last sampling step's tokens on the device, by request id (inputs of the next step)."""

    tokens: torch.Tensor  # [num_samplers] int64
    rows: dict[str, int]


class ModelRunner:
    """Runs one engine step on the model; owns the attention backend (and so the KV cache).

    With `cuda_graphs` and a flashinfer backend, a step in which every sequence computes one
    token and no prefix group is cascaded runs as a CUDA graph of its batch size rounded up to a
    bucket of `max_num_seqs` (with `graph_prefix_tiles`, one that reads shared prefixes once per
    tile where the step has long ones). With `cuda_graphs` on CUDA, the other steps of at most
    `piecewise_graph_tokens` tokens (0: none) run as piecewise graphs around eager attention;
    longer steps run eagerly. The graphs are all captured here, so no request waits for a
    capture or a kernel compile. On CUDA in 16-bit the model uses
    flashinfer's fused kernels where flashinfer is installed, and with `small_batch_linear`
    parrotlet's Triton kernel for linear layers of a few rows; `programmatic_launch`: see
    EngineConfig.
    """

    def __init__(
        self,
        model: LlamaForCausalLM,
        attention: AttentionBackend,
        *,
        shared_prefix_attention: bool = True,
        min_shared_prefix_tokens: int = 0,
        cuda_graphs: bool = False,
        max_num_seqs: int = 64,
        small_batch_linear: bool = True,
        graph_decode_attention: str = "auto",
        graph_prefix_tiles: bool = True,
        programmatic_launch: bool = True,
        piecewise_graph_tokens: int = 0,
    ) -> None:
        self.model = model
        self.attention = attention
        self.block_size = attention.spec.block_size
        self.device = attention.spec.device
        self.shared_prefix_attention = shared_prefix_attention
        self.min_shared_blocks = max(1, -(-min_shared_prefix_tokens // self.block_size))
        self.sampler = Sampler()
        self._generators: dict[str, torch.Generator | None] = {}
        self.counts = TokenCounts(model.config.vocab_size, self.device)  # penalties' state
        self.eos_token_ids = model.config.eos_token_ids  # min_tokens masks them
        self._last: _Sampled | None = None
        spec = attention.spec
        self.kernels: FusedKernels | None = None
        if spec.device.type == "cuda" and spec.dtype in (torch.float16, torch.bfloat16):
            self.kernels = load_fused_kernels(small_batch_linear, programmatic_launch)
        self.graphs = None
        if cuda_graphs:
            self.graphs = self._graph_runner(
                max_num_seqs, graph_decode_attention, graph_prefix_tiles, programmatic_launch
            )
        if self.graphs is not None:
            self.graphs.capture_all(block=0)  # before any request: every block is free
        self.pieces = None
        if cuda_graphs and piecewise_graph_tokens and self.device.type == "cuda":
            self.pieces = PiecewiseGraphRunner(model, attention, piecewise_graph_tokens,
                                               self.kernels)  # fmt: skip
            self.pieces.capture_all()

    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch) -> LaunchedStep:
        """Queue the batch's forward pass and sampling; nothing here waits for the device."""
        caught_up = tuple(
            s.num_computed_tokens + n == s.num_tokens
            for s, n in zip(batch.seqs, batch.num_new_tokens, strict=True)
        )
        samplers = [i for i, c in enumerate(caught_up) if c and batch.seqs[i].params.max_tokens]
        decode = self._graph_step(batch)
        if decode is not None and self.graphs is not None:
            logits = self.graphs.run(decode, fill=partial(self._fill_pending, batch))
            if len(samplers) < len(batch.seqs):
                logits = logits[to_device(samplers, self.device)] if samplers else None
        else:
            logits = self._run_planned(batch, samplers)  # [num_samplers, vocab] or None
        if logits is None:
            self._last = None
            return LaunchedStep(caught_up, (), None, None)
        seqs = [batch.seqs[i] for i in samplers]
        raw = logits
        logits = self.counts.penalize(logits, seqs)  # penalized sequences only
        logits = apply_logit_bias(logits, seqs)  # sequences with a logit_bias only
        logits = apply_min_tokens(logits, seqs, self.eos_token_ids)  # short of min_tokens only
        logits = mask_logits(logits, [s.matcher for s in seqs])  # guided sequences only
        tokens = self.sampler(logits, [s.params for s in seqs], [self._generator(s) for s in seqs])
        self.counts.record(seqs, tokens)  # on the device: the next step's penalties see them
        self._last = _Sampled(tokens, {s.request_id: row for row, s in enumerate(seqs)})
        nums = tuple(s.params.logprobs for s in seqs)
        if all(k is None for k in nums):
            (tokens,), ready = self._to_host(tokens)
            return LaunchedStep(caught_up, tuple(samplers), tokens, ready)
        values, ids = token_logprobs(raw, tokens, max(k for k in nums if k is not None))
        (tokens, values, ids), ready = self._to_host(tokens, values, ids)
        return LaunchedStep(caught_up, tuple(samplers), tokens, ready, (values, ids, nums))

    def _to_host(
        self, *tensors: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], torch.cuda.Event | None]:
        """Start the tensors' device->host copy; the event fires when they have arrived."""
        if self.device.type != "cuda":
            return tensors, None
        host = tuple(t.to("cpu", non_blocking=True) for t in tensors)
        ready = torch.cuda.Event()
        ready.record()
        return host, ready

    def _fill_pending(self, batch: ScheduledBatch, input_ids: torch.Tensor) -> None:
        """Write the previous step's sampled tokens into this step's input ids (`[num_tokens]`
        on the device) where the host does not know them yet (PENDING)."""
        index, rows = [], []
        offset = 0
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            start = seq.num_computed_tokens
            for pos in range(max(start, seq.num_known_tokens), start + n):
                assert self._last is not None and seq.request_id in self._last.rows, (
                    f"{seq.request_id}: input token {pos} is pending but the last step did not "
                    "sample it"
                )
                index.append(offset + pos - start)
                rows.append(self._last.rows[seq.request_id])
            offset += n
        if index and self._last is not None:
            where = to_device(index + rows, self.device).view(2, len(index))  # [2, num_pending]
            input_ids.index_copy_(0, where[0], self._last.tokens[where[1]].to(input_ids.dtype))

    def _run_planned(self, batch: ScheduledBatch, samplers: list[int]) -> torch.Tensor | None:
        """Plan attention and run the model (through the piecewise graphs where the step fits
        them); logits `[len(samplers), vocab]`, None if no samplers."""
        input_ids, positions, metadata = self.prepare(batch)
        self._fill_pending(batch, input_ids)
        self.attention.plan(metadata)
        if self.pieces is not None and len(input_ids) <= self.pieces.max_tokens:
            hidden = self.pieces.forward(input_ids, positions)
        else:
            hidden = self.model(input_ids, positions, self.attention, self.kernels)
        if not samplers:
            return None
        if len(samplers) == len(batch.seqs):  # every sequence's last row, already on the device
            rows = metadata.query_start_loc[1:].long() - 1  # [num_seqs]
        else:
            ends = list(itertools.accumulate(metadata.query_lens_host))
            rows = to_device([ends[i] - 1 for i in samplers], self.device)
        return self.model.compute_logits(hidden[rows], self.kernels)  # [num_samplers, vocab]

    def _graph_runner(
        self, max_num_seqs: int, decode_kernel: str, prefix_tiles: bool, programmatic: bool
    ) -> CudaGraphRunner | None:
        """A CudaGraphRunner where the device is CUDA and the backend is flashinfer, else None."""
        from parrotlet_kernels.flashinfer_backend import FlashInferBackend

        if self.device.type != "cuda" or not isinstance(self.attention, FlashInferBackend):
            return None
        if not triton_linear.triton_available():  # "auto" and the tiles fall back to flashinfer
            prefix_tiles = False
            if decode_kernel == "auto":
                decode_kernel = "flashinfer"
        max_blocks_per_seq = -(-self.model.config.max_position_embeddings // self.block_size)
        max_pages = max_num_seqs * max_blocks_per_seq
        return CudaGraphRunner(
            self.model, self.attention, max_num_seqs, max_pages, self.kernels, decode_kernel,
            prefix_tiles, programmatic,
        )  # fmt: skip

    def _graph_step(self, batch: ScheduledBatch) -> PaddedDecode | None:
        """The padded graph inputs when this step can replay a CUDA graph, else None."""
        if self.graphs is None or any(n != 1 for n in batch.num_new_tokens):
            return None
        seq_lens = [s.num_computed_tokens + 1 for s in batch.seqs]
        groups = self._prefix_groups(batch.seqs, [1] * len(seq_lens), seq_lens)
        return self.graphs.prepare(batch.seqs, groups)

    def release(self, seq: Sequence) -> None:
        """Forget per-request state (the seeded generator, penalties' counts) of a finished
        sequence."""
        self._generators.pop(seq.request_id, None)
        self.counts.release(seq.request_id)

    def prepare(
        self, batch: ScheduledBatch
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """Flatten the batch into input ids, positions and the step's attention metadata."""
        bs = self.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens: list[int] = []
        seq_lens: list[int] = []
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + n
            ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(seq.block_ids[p // bs] * bs + p % bs for p in range(start, end))
            query_lens.append(n)
            seq_lens.append(end)
        width = max(len(s.block_ids) for s in batch.seqs)  # each holds exactly its seq_len
        tables = [s.block_ids + [0] * (width - len(s.block_ids)) for s in batch.seqs]
        query_start = [0, *itertools.accumulate(query_lens)]
        host = [ids, positions, slots, query_start, seq_lens, [b for t in tables for b in t]]
        sizes = [len(part) for part in host]
        packed = torch.tensor(list(itertools.chain(*host)), dtype=torch.long)
        parts = packed.to(self.device, non_blocking=True).split(sizes)  # the one host->device copy
        metadata = AttentionMetadata(
            query_start_loc=parts[3].to(torch.int32),
            seq_lens=parts[4].to(torch.int32),
            block_tables=parts[5].to(torch.int32).view(len(tables), width),
            slot_mapping=parts[2],
            query_lens_host=tuple(query_lens),
            seq_lens_host=tuple(seq_lens),
            prefix_groups=self._prefix_groups(batch.seqs, query_lens, seq_lens),
        )
        return parts[0], parts[1], metadata

    def _prefix_groups(
        self, seqs: Seq[Sequence], query_lens: Seq[int], seq_lens: Seq[int]
    ) -> tuple[PrefixGroup, ...]:
        """Group sequences by their first KV block; each group shares its common leading blocks.

        Only blocks wholly before every member's first query token are shared, so every query of
        the group attends the whole shared prefix.
        """
        if not self.shared_prefix_attention:
            return ()
        by_first_block: dict[int, list[int]] = defaultdict(list)
        for i, seq in enumerate(seqs):
            if seq.block_ids:
                by_first_block[seq.block_ids[0]].append(i)
        groups = []
        for members in by_first_block.values():
            if len(members) < 2:
                continue
            limit = min((seq_lens[i] - query_lens[i]) // self.block_size for i in members)
            num_blocks = self._common_blocks([seqs[i].block_ids for i in members], limit)
            if num_blocks >= self.min_shared_blocks:
                groups.append(PrefixGroup(tuple(members), num_blocks))
        return tuple(groups)

    @staticmethod
    def _common_blocks(tables: Seq[list[int]], limit: int) -> int:
        """Length of the tables' common leading run, at most `limit` (slice compares run in C:
        a decode step of 64 sequences over a 5000-token prefix checks 312 blocks each)."""
        first = tables[0][:limit]
        n = len(first)
        for table in tables[1:]:
            if table[:n] == first[:n]:
                continue
            lo, hi = 0, n - 1  # the longest common run is in [lo, hi]
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if table[:mid] == first[:mid] else (lo, mid - 1)
            n = lo
        return n

    def _generator(self, seq: Sequence) -> torch.Generator | None:
        if seq.request_id not in self._generators:
            self._generators[seq.request_id] = make_generator(seq.params.seed, self.device)
        return self._generators[seq.request_id]
