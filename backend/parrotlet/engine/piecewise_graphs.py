"""Piecewise CUDA graphs: the steps the decode graphs cannot run (prefill, mixed and cascade
steps) replay everything but attention as CUDA graphs, one run of graphs per token count.

A step with prompt tokens plans attention kernels whose shapes change every step, so it cannot
be one graph; run eagerly, its host launches hundreds of small kernels and, on a Llama-3-8B
step of a few hundred tokens, takes longer to launch them than the device takes to run them.
Here the forward pass is captured in pieces that end at each attention call: the first piece
runs the embedding and layer 0 up to its attention's inputs, piece i the rest of layer i - 1
and layer i up to its attention, the last piece the rest of the last layer and the final norm.
At replay, attention runs eagerly between the pieces on the step's real tokens, planned as in
an eager step, so any mix of prompt chunks, decode rows and prefix groups fits one run.

The pieces are captured at engine start for every token count in `piecewise_token_sizes`; a
step is padded up to the nearest. Outside attention every row is computed on its own, so the
padding rows (whatever tokens the buffers last held) change no real row, and attention never
sees them: their keys and values are not written. ModelRunner decides which steps take this
path; the model code is the same as in an eager step (the split happens in `StagedAttention`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from parrotlet.engine.cuda_graphs import bucket_for
from parrotlet.engine.models.llama import FusedKernels, LlamaForCausalLM
from parrotlet_kernels.interface import AttentionBackend, AttentionSpec

logger = logging.getLogger(__name__)

TOKEN_STEP = 16  # the token counts of the pieces are its multiples


def piecewise_token_sizes(max_tokens: int) -> tuple[int, ...]:
    """Every multiple of TOKEN_STEP up to `max_tokens`, and `max_tokens`."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    return tuple(sorted({*range(TOKEN_STEP, max_tokens + 1, TOKEN_STEP), max_tokens}))


class StagedAttention:
    """Stands in for the attention backend inside the pieces.

    At each layer's attention the model's q, k and v are copied into fixed buffers, `between`
    runs (while capturing: the current graph ends and the next begins), and the model reads the
    fixed output buffer, which `attend` fills between the pieces' replays.
    """

    def __init__(self, spec: AttentionSpec, max_tokens: int) -> None:
        def buffer(heads: int) -> torch.Tensor:  # [max_tokens, heads, head_dim]
            return torch.zeros(max_tokens, heads, spec.head_dim, dtype=spec.dtype,
                               device=spec.device)  # fmt: skip

        self.q, self.out = buffer(spec.num_heads), buffer(spec.num_heads)
        self.k, self.v = buffer(spec.num_kv_heads), buffer(spec.num_kv_heads)
        self.between: Callable[[int], None] = lambda layer: None

    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        v: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        layer: int,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim], the output buffer's rows
        n = q.shape[0]
        self.q[:n].copy_(q)
        self.k[:n].copy_(k)
        self.v[:n].copy_(v)
        self.between(layer)
        return self.out[:n]

    def attend(self, attention: AttentionBackend, layer: int, num_tokens: int) -> None:
        """Run `layer`'s attention (planned for `num_tokens` tokens) on the buffers' first rows."""
        rows = slice(0, num_tokens)
        out = attention.forward(self.q[rows], self.k[rows], self.v[rows], layer)
        self.out[rows].copy_(out)


@dataclass(frozen=True)
class _Pieces:
    graphs: tuple[torch.cuda.CUDAGraph, ...]  # num_layers + 1, replayed in order
    hidden: torch.Tensor  # [size, hidden], the final norm's output, written by the last graph


class PiecewiseGraphRunner:
    """The forward pass of steps of up to `max_tokens` tokens as pieces of CUDA graphs, one run
    per size of `sizes`, captured by `capture_all` (or on first use).

    The pieces read fixed input-id and position buffers, which `forward` fills from the step's
    device tensors; all share one memory pool and one StagedAttention, so one runs at a time.
    """

    def __init__(
        self,
        model: LlamaForCausalLM,
        attention: AttentionBackend,
        max_tokens: int,
        kernels: FusedKernels | None = None,
    ) -> None:
        self.model, self.attention, self.kernels = model, attention, kernels
        self.sizes = piecewise_token_sizes(max_tokens)
        device = attention.spec.device
        self.staged = StagedAttention(attention.spec, max_tokens)
        self._ids = torch.zeros(max_tokens, dtype=torch.long, device=device)
        self._positions = torch.zeros(max_tokens, dtype=torch.long, device=device)
        self._pieces: dict[int, _Pieces] = {}
        self._pool: tuple[int, int] | None = None
        self._stream: torch.cuda.Stream | None = None  # capture needs one other than the default
        self.replays = 0  # serving steps

    @property
    def max_tokens(self) -> int:
        return self.sizes[-1]

    @property
    def captured(self) -> tuple[int, ...]:
        """The sizes captured so far, in capture order."""
        return tuple(self._pieces)

    @property
    def num_graphs(self) -> int:
        """Graphs captured so far: num_layers + 1 per size."""
        return sum(len(p.graphs) for p in self._pieces.values())

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Hidden states after the final norm, `[num_tokens, hidden]` (a view, valid until the
        next forward), of a step of at most `max_tokens` tokens whose attention is planned."""
        n = input_ids.shape[0]
        size = bucket_for(self.sizes, n)
        if size is None:
            raise ValueError(f"a step of {n} tokens exceeds the pieces' {self.max_tokens}")
        self._ids[:n].copy_(input_ids)
        self._positions[:n].copy_(positions)
        if size not in self._pieces:
            self._pieces[size] = self._capture(size)
        pieces = self._pieces[size]
        pieces.graphs[0].replay()
        for layer, graph in enumerate(pieces.graphs[1:]):
            self.staged.attend(self.attention, layer, n)
            graph.replay()
        self.replays += 1
        return pieces.hidden[:n]

    def capture_all(self) -> None:
        """Capture every size now, largest first (the smaller ones then fit in the pool it
        leaves), so no request waits for a capture or a kernel compile."""
        start = time.perf_counter()
        for size in reversed(self.sizes):
            if size not in self._pieces:
                self._pieces[size] = self._capture(size)
        torch.cuda.synchronize()
        logger.info("captured %d piecewise CUDA graphs in %.1f s", self.num_graphs,
                    time.perf_counter() - start)  # fmt: skip

    @torch.inference_mode()
    def _capture(self, size: int) -> _Pieces:
        """Warm up (compiling and tuning kernels outside the capture), then capture the forward
        pass over the buffers' first `size` rows, a new graph at each attention call."""
        if self._pool is None or self._stream is None:
            self._pool, self._stream = torch.cuda.graph_pool_handle(), torch.cuda.Stream()
        ids, positions = self._ids[:size], self._positions[:size]
        graphs = [torch.cuda.CUDAGraph()]

        def split(layer: int) -> None:
            graphs[-1].capture_end()
            graphs.append(torch.cuda.CUDAGraph())
            graphs[-1].capture_begin(pool=self._pool)

        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.staged.between = lambda layer: None
            self._forward(ids, positions)
            torch.cuda.synchronize()
            self.staged.between = split
            graphs[0].capture_begin(pool=self._pool)
            try:
                hidden = self._forward(ids, positions)
            finally:
                graphs[-1].capture_end()
                self.staged.between = lambda layer: None
        torch.cuda.current_stream().wait_stream(stream)
        return _Pieces(tuple(graphs), hidden)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(ids, positions, self.staged, self.kernels)  # type: ignore[arg-type]
