"""Paged attention in plain torch: flat KV slots, one batched SDPA call for decodes and one for prefills.

The KV cache of a layer is a K and a V tensor of [num_slots, kv_heads, head_dim], num_slots = num_blocks * block_size;
token position p of a sequence lives at slot block_table[p // block_size] * block_size + p % block_size.

Tokens of a step are laid out decodes first (one token each), then prefill chunks (one or more tokens each, possibly
after a cached prefix). Each step writes the new K/V at their slots, then gathers every sequence's whole context
back from the cache, so a cached prefix and the new tokens are read the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    """Index tensors for one step, built once by the runner and shared by every layer."""

    slot_mapping: torch.Tensor  # [T] int64: where each new token's K/V is written
    num_decode_tokens: int  # the first num_decode_tokens tokens are decodes, one per sequence
    decode_slots: torch.Tensor | None  # [B, Ld] int64: context slots of each decode sequence, padded with 0
    decode_mask: torch.Tensor | None  # [B, 1, 1, Ld] bool: True where a key is in that sequence's context
    prefill_q_index: torch.Tensor | None  # [Tp] int64: row of each prefill token in the padded [P * Qmax] queries
    prefill_slots: torch.Tensor | None  # [P, Lp] int64: context slots of each prefill sequence, padded with 0
    prefill_mask: torch.Tensor | None  # [P, 1, Qmax, Lp] bool: causal, offset by the cached prefix
    num_prefill_seqs: int = 0
    prefill_max_q: int = 0


def context_slots(block_tables: torch.Tensor, block_size: int, max_len: int) -> torch.Tensor:
    """block_tables [S, blocks] -> the slots of positions 0 .. max_len - 1 of each sequence [S, max_len]."""
    offsets = torch.arange(block_size, device=block_tables.device)
    slots = block_tables.unsqueeze(-1) * block_size + offsets  # [S, blocks, block_size]
    return slots.flatten(1)[:, :max_len]


def build_metadata(
    slot_mapping: list[int],
    decode_block_tables: list[list[int]],
    decode_context_lens: list[int],  # tokens including the new one
    prefill_block_tables: list[list[int]],
    prefill_start_pos: list[int],  # tokens already cached
    prefill_query_lens: list[int],  # new tokens of each chunk
    block_size: int,
    device: torch.device,
) -> AttentionMetadata:
    """Host lists -> index tensors on `device` (each copied once, without waiting on the device)."""

    def to_device(rows: list[int] | list[list[int]]) -> torch.Tensor:
        host = torch.tensor(rows, dtype=torch.int64)
        if device.type == "cuda":
            return host.pin_memory().to(device, non_blocking=True)
        return host.to(device)

    decode_slots = decode_mask = None
    if decode_context_lens:
        max_len = max(decode_context_lens)
        decode_slots = context_slots(to_device(_pad(decode_block_tables)), block_size, max_len)
        keys = torch.arange(max_len, device=device)
        decode_mask = (keys < to_device(decode_context_lens).unsqueeze(1))[:, None, None, :]
    prefill_q_index = prefill_slots = prefill_mask = None
    max_q = max(prefill_query_lens, default=0)
    if prefill_query_lens:
        max_len = max(s + q for s, q in zip(prefill_start_pos, prefill_query_lens))
        prefill_slots = context_slots(to_device(_pad(prefill_block_tables)), block_size, max_len)
        prefill_q_index = to_device([row * max_q + i for row, q in enumerate(prefill_query_lens) for i in range(q)])
        query_pos = to_device(prefill_start_pos)[:, None] + torch.arange(max_q, device=device)  # [P, Qmax]
        keys = torch.arange(max_len, device=device)
        prefill_mask = (keys <= query_pos.unsqueeze(-1)).unsqueeze(1)  # [P, 1, Qmax, Lp]
    return AttentionMetadata(
        slot_mapping=to_device(slot_mapping),
        num_decode_tokens=len(decode_context_lens),
        decode_slots=decode_slots,
        decode_mask=decode_mask,
        prefill_q_index=prefill_q_index,
        prefill_slots=prefill_slots,
        prefill_mask=prefill_mask,
        num_prefill_seqs=len(prefill_query_lens),
        prefill_max_q=max_q,
    )


def _pad(tables: list[list[int]]) -> list[list[int]]:
    width = max(len(t) for t in tables)
    return [t + [0] * (width - len(t)) for t in tables]


def paged_attention(
    q: torch.Tensor,  # [T, heads, dim]
    k: torch.Tensor,  # [T, kv_heads, dim]
    v: torch.Tensor,  # [T, kv_heads, dim]
    k_cache: torch.Tensor,  # [slots, kv_heads, dim]
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:  # [T, heads, dim]
    k_cache.index_copy_(0, meta.slot_mapping, k)
    v_cache.index_copy_(0, meta.slot_mapping, v)
    n = meta.num_decode_tokens
    parts = []
    if n:
        parts.append(_decode(q[:n], k_cache, v_cache, meta, scale))
    if meta.num_prefill_seqs:
        parts.append(_prefill(q[n:], k_cache, v_cache, meta, scale))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
            scale: float) -> torch.Tensor:
    """q [B, heads, dim], one query per sequence -> [B, heads, dim]."""
    assert meta.decode_slots is not None and meta.decode_mask is not None
    batch, heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    keys = k_cache[meta.decode_slots].transpose(1, 2)  # [B, kv_heads, Ld, dim]
    values = v_cache[meta.decode_slots].transpose(1, 2)
    # The query heads sharing a kv head become that head's query rows, so K/V are never expanded.
    grouped = q.view(batch, kv_heads, heads // kv_heads, dim)  # [B, kv_heads, group, dim]
    out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=meta.decode_mask, scale=scale)
    return out.reshape(batch, heads, dim)


def _prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
             scale: float) -> torch.Tensor:
    """q [Tp, heads, dim] of every prefill chunk -> [Tp, heads, dim], padded to [P, Qmax] for one SDPA call."""
    assert meta.prefill_slots is not None and meta.prefill_mask is not None and meta.prefill_q_index is not None
    tokens, heads, dim = q.shape
    seqs, max_q = meta.num_prefill_seqs, meta.prefill_max_q
    if seqs == 1:
        padded = q.unsqueeze(0)  # [1, Tp, heads, dim]: one chunk needs no padding
    else:
        padded = q.new_zeros(seqs * max_q, heads, dim)
        padded.index_copy_(0, meta.prefill_q_index, q)
        padded = padded.view(seqs, max_q, heads, dim)
    keys = k_cache[meta.prefill_slots].transpose(1, 2)  # [P, kv_heads, Lp, dim]
    values = v_cache[meta.prefill_slots].transpose(1, 2)
    out = F.scaled_dot_product_attention(
        padded.transpose(1, 2), keys, values, attn_mask=meta.prefill_mask, scale=scale,
        enable_gqa=keys.shape[1] != heads,
    )  # [P, heads, Qmax, dim]
    out = out.transpose(1, 2).reshape(seqs * max_q, heads, dim)
    return out if seqs == 1 else out[meta.prefill_q_index]
