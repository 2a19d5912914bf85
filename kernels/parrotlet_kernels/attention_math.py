"""Pure-torch attention returning its softmax log-sum-exp, and the merge of two partial states.

The torch reference backend's cascade (shared-prefix) path is built from these; they are also the
oracle for flashinfer's merge_state (which uses base-2 LSE: lse2 = lse / ln 2).
"""

from __future__ import annotations

import torch


def attention_with_lse(
    q: torch.Tensor,  # [..., num_queries, num_heads, head_dim]
    k: torch.Tensor,  # [..., num_kv, num_kv_heads, head_dim]
    v: torch.Tensor,  # [..., num_kv, num_kv_heads, head_dim]
    scale: float,
    mask: torch.Tensor | None = None,  # [..., num_queries, num_kv] bool, True = may attend
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention with grouped KV heads, returning the output and its natural-log LSE.

    Query head `h` reads KV head `h // (num_heads // num_kv_heads)`. A query row with no key to
    attend (all masked, or `num_kv == 0`) gets output 0 and LSE -inf, so it merges as a no-op.
    Computes in the dtype of `q`; callers upcast.

    Returns:
        out `[..., num_queries, num_heads, head_dim]` and lse `[..., num_queries, num_heads]`.
    """
    num_queries, num_heads = q.shape[-3], q.shape[-2]
    num_kv_heads = k.shape[-2]
    group = num_heads // num_kv_heads
    folded = fold_query_groups(q, num_kv_heads)  # [..., kv_heads, group * num_queries, head_dim]
    keys_t = k.movedim(-3, -1)  # [..., kv_heads, head_dim, num_kv]
    scores = torch.matmul(folded, keys_t) * scale  # [..., kv_heads, group * num_queries, num_kv]
    scores = scores.unflatten(
        -2, (group, num_queries)
    )  # [..., kv_heads, group, num_queries, num_kv]
    if mask is not None:
        scores = scores.masked_fill(~mask[..., None, None, :, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [..., kv_heads, group, num_queries]
    probs = torch.exp(scores - _finite_or_zero(lse).unsqueeze(-1))
    values = v.movedim(-3, -2)  # [..., kv_heads, num_kv, head_dim]
    out = torch.matmul(
        probs.flatten(-3, -2), values
    )  # [..., kv_heads, group * num_queries, head_dim]
    lse = lse.movedim(-1, -3).flatten(-2)  # [..., num_queries, num_heads]
    return unfold_query_groups(out, num_queries), lse


def merge_attention_states(
    out_a: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    lse_a: torch.Tensor,  # [num_tokens, num_heads], natural log
    out_b: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    lse_b: torch.Tensor,  # [num_tokens, num_heads], natural log
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine attention over two disjoint key sets into attention over their union.

    Exact: softmax over A ∪ B = (e^lse_a · out_a + e^lse_b · out_b) / (e^lse_a + e^lse_b). A side
    with LSE -inf (no keys) contributes nothing; if both are -inf the result is 0 with LSE -inf.
    Any leading batch shape works as long as out has one more trailing dim than lse.

    Returns:
        out like `out_a` and lse like `lse_a`.
    """
    lse = torch.logaddexp(lse_a, lse_b)  # [num_tokens, num_heads]
    safe = _finite_or_zero(lse)
    weight_a = torch.exp(lse_a - safe).unsqueeze(-1)  # [num_tokens, num_heads, 1]
    weight_b = torch.exp(lse_b - safe).unsqueeze(-1)  # [num_tokens, num_heads, 1]
    return weight_a * out_a + weight_b * out_b, lse


def fold_query_groups(q: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """[..., nq, num_heads, hd] -> [..., kv_heads, group * nq, hd]: one KV head's queries together.

    With GQA this turns attention into one matmul per KV head without repeating K/V.
    """
    *batch, num_queries, num_heads, head_dim = q.shape
    group = num_heads // num_kv_heads
    grouped = q.reshape(*batch, num_queries, num_kv_heads, group, head_dim)
    return grouped.movedim(-4, -2).reshape(*batch, num_kv_heads, group * num_queries, head_dim)


def unfold_query_groups(out: torch.Tensor, num_queries: int) -> torch.Tensor:
    """Inverse of fold_query_groups: [..., kv_heads, group * nq, hd] -> [..., nq, num_heads, hd]."""
    *batch, num_kv_heads, rows, head_dim = out.shape
    group = rows // num_queries
    split = out.unflatten(-2, (group, num_queries)).movedim(
        -2, -4
    )  # [..., nq, kv_heads, group, hd]
    return split.reshape(*batch, num_queries, num_kv_heads * group, head_dim)


def _finite_or_zero(lse: torch.Tensor) -> torch.Tensor:
    """LSE with -inf replaced by 0, so `x - lse` stays -inf (not NaN) for rows without keys."""
    return lse.masked_fill(torch.isneginf(lse), 0.0)
