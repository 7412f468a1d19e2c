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

SMALL_DECODE_BATCH = 8  # below this, SDPA's kernel is faster on CPU too


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    """Index tensors for one step, built once by the runner and shared by every layer."""

    slot_mapping: torch.Tensor  # [T] int64: where each new token's K/V is written
    num_decode_tokens: int  # the first num_decode_tokens tokens are decodes, one per sequence
    block_size: int
    decode_block_tables: torch.Tensor | None  # [B, blocks] int64: each decode sequence's blocks, padded with 0
    decode_mask: torch.Tensor | None  # [B, 1, 1, Ld] bool, Ld = blocks * block_size: True where a key is context
    prefill_q_index: torch.Tensor | None  # [Tp] int64: row of each prefill token in the padded [P * Qmax] queries
    prefill_block_tables: torch.Tensor | None  # [P, blocks] int64: each prefill sequence's blocks, padded with 0
    prefill_mask: torch.Tensor | None  # [P, 1, Qmax, Lp] bool: causal, offset by the cached prefix
    num_prefill_seqs: int = 0
    prefill_max_q: int = 0


def gather_context(cache: torch.Tensor, block_tables: torch.Tensor, block_size: int) -> torch.Tensor:
    """cache [slots, kv_heads, dim], block_tables [S, blocks] -> [S, kv_heads, blocks * block_size, dim].

    Whole blocks are gathered as the rows of one index_select: several times faster than indexing slot by slot.
    """
    seqs, blocks = block_tables.shape
    kv_heads, dim = cache.shape[1], cache.shape[2]
    by_block = cache.view(-1, block_size * kv_heads * dim)  # [num_blocks, block_size * kv_heads * dim]
    context = by_block.index_select(0, block_tables.flatten())
    return context.view(seqs, blocks * block_size, kv_heads, dim).transpose(1, 2)


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

    decode_tables = decode_mask = None
    if decode_context_lens:
        padded = _pad(decode_block_tables, decode_context_lens, block_size)
        decode_tables = to_device(padded)
        keys = torch.arange(len(padded[0]) * block_size, device=device)
        decode_mask = (keys < to_device(decode_context_lens).unsqueeze(1))[:, None, None, :]
    prefill_q_index = prefill_tables = prefill_mask = None
    max_q = max(prefill_query_lens, default=0)
    if prefill_query_lens:
        ends = [s + q for s, q in zip(prefill_start_pos, prefill_query_lens)]
        padded = _pad(prefill_block_tables, ends, block_size)
        prefill_tables = to_device(padded)
        prefill_q_index = to_device([row * max_q + i for row, q in enumerate(prefill_query_lens) for i in range(q)])
        query_pos = to_device(prefill_start_pos)[:, None] + torch.arange(max_q, device=device)  # [P, Qmax]
        keys = torch.arange(len(padded[0]) * block_size, device=device)
        prefill_mask = (keys <= query_pos.unsqueeze(-1)).unsqueeze(1)  # [P, 1, Qmax, Lp]
    return AttentionMetadata(
        slot_mapping=to_device(slot_mapping),
        block_size=block_size,
        num_decode_tokens=len(decode_context_lens),
        decode_block_tables=decode_tables,
        decode_mask=decode_mask,
        prefill_q_index=prefill_q_index,
        prefill_block_tables=prefill_tables,
        prefill_mask=prefill_mask,
        num_prefill_seqs=len(prefill_query_lens),
        prefill_max_q=max_q,
    )


def _pad(tables: list[list[int]], lengths: list[int], block_size: int) -> list[list[int]]:
    """Each table cut to the blocks its context uses, then padded with block 0 to the longest."""
    used = [-(-n // block_size) for n in lengths]
    width = max(used)
    return [table[:n] + [0] * (width - n) for table, n in zip(tables, used)]


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
    assert meta.decode_block_tables is not None and meta.decode_mask is not None
    batch, heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    keys = gather_context(k_cache, meta.decode_block_tables, meta.block_size)  # [B, kv_heads, Ld, dim]
    values = gather_context(v_cache, meta.decode_block_tables, meta.block_size)
    # The query heads sharing a kv head become that head's query rows, so K/V are never expanded.
    grouped = q.view(batch, kv_heads, heads // kv_heads, dim)  # [B, kv_heads, group, dim]
    if q.device.type == "cpu" and q.dtype != torch.float32 and batch >= SMALL_DECODE_BATCH:
        out = _decode_by_matmul(grouped, keys, values, meta.decode_mask, scale)
    else:
        out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=meta.decode_mask, scale=scale)
    return out.reshape(batch, heads, dim)


def _decode_by_matmul(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """Attention as two batched matmuls with a float32 softmax: q [B, kv_heads, group, dim] -> the same shape.

    On CPU in bfloat16, SDPA's flash kernel does poorly with a handful of query rows: at batch 64 and 144 keys
    it took 1987 us per call against 414 us for this (1 thread); in float32 the two were even, so SDPA stays there.
    """
    scores = torch.matmul(q, keys.transpose(-1, -2)).float()  # [B, kv_heads, group, Ld]
    scores.mul_(scale).masked_fill_(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1).to(values.dtype), values)  # [B, kv_heads, group, dim]


def _prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
             scale: float) -> torch.Tensor:
    """q [Tp, heads, dim] of every prefill chunk -> [Tp, heads, dim], padded to [P, Qmax] for one SDPA call."""
    assert meta.prefill_block_tables is not None and meta.prefill_mask is not None and meta.prefill_q_index is not None
    tokens, heads, dim = q.shape
    seqs, max_q = meta.num_prefill_seqs, meta.prefill_max_q
    if seqs == 1:
        padded = q.unsqueeze(0)  # [1, Tp, heads, dim]: one chunk needs no padding
    else:
        padded = q.new_zeros(seqs * max_q, heads, dim)
        padded.index_copy_(0, meta.prefill_q_index, q)
        padded = padded.view(seqs, max_q, heads, dim)
    keys = gather_context(k_cache, meta.prefill_block_tables, meta.block_size)  # [P, kv_heads, Lp, dim]
    values = gather_context(v_cache, meta.prefill_block_tables, meta.block_size)
    out = F.scaled_dot_product_attention(
        padded.transpose(1, 2), keys, values, attn_mask=meta.prefill_mask, scale=scale,
        enable_gqa=keys.shape[1] != heads,
    )  # [P, heads, Qmax, dim]
    out = out.transpose(1, 2).reshape(seqs * max_q, heads, dim)
    return out if seqs == 1 else out[meta.prefill_q_index]
