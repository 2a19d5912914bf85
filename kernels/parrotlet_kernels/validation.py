"""Checks that one step's AttentionMetadata is consistent, run by a backend's plan().

Host checks read only the host tuples and shapes; device checks read the device tensors (a sync on
GPU), so fast backends may skip them while the torch reference always runs both.
"""

from __future__ import annotations

from itertools import accumulate

import torch

from parrotlet_kernels.interface import AttentionMetadata, AttentionSpec


def validate_metadata(
    metadata: AttentionMetadata, spec: AttentionSpec, device: bool = True
) -> None:
    """Raise ValueError naming the offending field if `metadata` cannot be attended as described."""
    _check_shapes(metadata)
    _check_sequences(metadata, spec)
    _check_prefix_groups_host(metadata, spec)
    if device:
        _check_device_mirrors(metadata)
        _check_block_ids(metadata, spec)
        _check_slot_mapping(metadata, spec)
        _check_prefix_groups_device(metadata)


def _check_shapes(md: AttentionMetadata) -> None:
    num_seqs = len(md.seq_lens_host)
    if len(md.query_lens_host) != num_seqs:
        raise ValueError(
            f"query_lens_host has {len(md.query_lens_host)} entries, seq_lens_host {num_seqs}"
        )
    expected = {
        "query_start_loc": (num_seqs + 1,),
        "seq_lens": (num_seqs,),
        "slot_mapping": (md.num_tokens,),
    }
    for name, shape in expected.items():
        actual = tuple(getattr(md, name).shape)
        if actual != shape:
            raise ValueError(f"{name} has shape {actual}, expected {shape}")
    if md.block_tables.dim() != 2 or md.block_tables.shape[0] != num_seqs:
        raise ValueError(
            f"block_tables has shape {tuple(md.block_tables.shape)}, "
            f"expected ({num_seqs}, max_blocks)"
        )


def _check_sequences(md: AttentionMetadata, spec: AttentionSpec) -> None:
    width = md.block_tables.shape[1]
    for i, (query_len, seq_len) in enumerate(
        zip(md.query_lens_host, md.seq_lens_host, strict=True)
    ):
        if query_len < 1:
            raise ValueError(f"query_lens_host[{i}] = {query_len}, must be >= 1")
        if query_len > seq_len:
            raise ValueError(
                f"query_lens_host[{i}] = {query_len} exceeds seq_lens_host[{i}] = {seq_len}"
            )
        if -(-seq_len // spec.block_size) > width:
            raise ValueError(
                f"block_tables has {width} columns, sequence {i} needs "
                f"ceil({seq_len} / {spec.block_size}) blocks"
            )


def _check_prefix_groups_host(md: AttentionMetadata, spec: AttentionSpec) -> None:
    seen: set[int] = set()
    for g, group in enumerate(md.prefix_groups):
        if not group.seq_indices or group.num_blocks < 1:
            raise ValueError(f"prefix_groups[{g}] needs >= 1 sequence and num_blocks >= 1")
        prefix_len = group.num_blocks * spec.block_size
        for i in group.seq_indices:
            if not 0 <= i < md.num_seqs:
                raise ValueError(f"prefix_groups[{g}] names sequence {i}, batch has {md.num_seqs}")
            if i in seen:
                raise ValueError(f"sequence {i} is in more than one prefix group")
            seen.add(i)
            first_query = md.seq_lens_host[i] - md.query_lens_host[i]
            if first_query < prefix_len:
                raise ValueError(
                    f"prefix_groups[{g}]: sequence {i} has a query at position {first_query}, "
                    f"inside the shared prefix of {prefix_len} tokens"
                )


def _check_device_mirrors(md: AttentionMetadata) -> None:
    if md.query_start_loc.tolist() != query_starts_host(md):
        raise ValueError(
            f"query_start_loc {md.query_start_loc.tolist()} != cumsum(query_lens_host)"
        )
    if md.seq_lens.tolist() != list(md.seq_lens_host):
        raise ValueError(f"seq_lens {md.seq_lens.tolist()} != seq_lens_host {md.seq_lens_host}")


def _check_block_ids(md: AttentionMetadata, spec: AttentionSpec) -> None:
    tables = md.block_tables.long()  # [num_seqs, max_blocks]
    needed = torch.tensor(
        [-(-n // spec.block_size) for n in md.seq_lens_host], device=tables.device
    )
    used = torch.arange(tables.shape[1], device=tables.device)[None, :] < needed[:, None]
    bad = used & ((tables < 0) | (tables >= spec.num_blocks))  # [num_seqs, max_blocks]
    if bool(bad.any()):
        i = int(bad.any(dim=1).nonzero()[0])
        raise ValueError(f"block_tables[{i}] holds a block id outside [0, {spec.num_blocks})")


def _check_slot_mapping(md: AttentionMetadata, spec: AttentionSpec) -> None:
    expected = expected_slot_mapping(md, spec.block_size)  # [num_tokens]
    wrong = (md.slot_mapping.long() != expected).nonzero()
    if wrong.numel():
        t = int(wrong[0])
        raise ValueError(
            f"slot_mapping[{t}] = {int(md.slot_mapping[t])}, but the block table puts that "
            f"token at slot {int(expected[t])}"
        )


def _check_prefix_groups_device(md: AttentionMetadata) -> None:
    for g, group in enumerate(md.prefix_groups):
        members = torch.tensor(group.seq_indices, device=md.block_tables.device)
        shared = md.block_tables[members, : group.num_blocks]  # [members, num_blocks]
        if not bool((shared == shared[:1]).all()):
            raise ValueError(
                f"prefix_groups[{g}]: block tables of sequences {group.seq_indices} differ "
                f"in their first {group.num_blocks} blocks"
            )


def expected_slot_mapping(md: AttentionMetadata, block_size: int) -> torch.Tensor:
    """[num_tokens] int64: the cache slot of every query token according to the block tables."""
    device = md.block_tables.device

    def host(values: list[int] | tuple[int, ...]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    query_lens = host(md.query_lens_host)  # [num_seqs]
    seq_of_token = torch.repeat_interleave(host(list(range(md.num_seqs))), query_lens)
    starts = host(query_starts_host(md)[:-1])  # [num_seqs]
    first_pos = host(md.seq_lens_host) - query_lens  # [num_seqs]
    offset = torch.arange(md.num_tokens, device=device) - starts[seq_of_token]  # [num_tokens]
    positions = first_pos[seq_of_token] + offset  # [num_tokens]
    blocks = md.block_tables.long()[seq_of_token, positions // block_size]  # [num_tokens]
    return blocks * block_size + positions % block_size


def query_starts_host(md: AttentionMetadata) -> list[int]:
    """Host copy of query_start_loc, from query_lens_host: `[num_seqs + 1]`."""
    return list(accumulate(md.query_lens_host, initial=0))
