"""Paged attention in plain torch: one call for every decode of a step and one SDPA call for its prefills.

The KV cache of a layer is a K and a V tensor of [kv_heads, num_blocks, block_size, head_dim]; token position p of a
sequence lives in block block_table[p // block_size] at row p % block_size, and its flat slot is
block_table[p // block_size] * block_size + p % block_size. Heads come first so that gathering a head's blocks gives
contiguous [sequence, key, dim] matrices, which batched matmuls take without another copy.

Tokens of a step are laid out decodes first (one token each), then prefill chunks (one or more tokens each, possibly
after a cached prefix). Each step writes the new K/V at their slots, then gathers every sequence's whole context
back from the cache, so a cached prefix and the new tokens are read the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from gpu_worker.model.buckets import bucket

PAD_FACTOR = 4  # a decode row is never padded to more than this many times its own blocks
SMALL_DECODE_BATCH = 8  # below this many decodes, SDPA's kernel is faster on CPU than two batched matmuls


class DecodeKernel(Protocol):
    """Decode attention that reads the cache in place (native_decode.py, decode_kernel.py)."""

    min_rows: int  # segments with fewer decodes take the gather path

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                 context_lens: torch.Tensor, scale: float) -> torch.Tensor:
        """q [B, kv_heads, group, dim], block_tables [B, blocks], context_lens [B] -> like q."""
        ...


def allocate_kv_cache(num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                      dtype: torch.dtype, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer a K and a V of [kv_heads, num_blocks, block_size, head_dim], zeroed.

    Zeroed by writing (empty + zero_), not torch.zeros: on CPU that maps pages lazily, and gathering blocks never
    written then reads the shared zero page, measured 5x slower than reading written memory.
    """
    shape = (kv_heads, num_blocks, block_size, head_dim)
    return [(torch.empty(shape, dtype=dtype, device=device).zero_(),
             torch.empty(shape, dtype=dtype, device=device).zero_()) for _ in range(num_layers)]


@dataclass(frozen=True, slots=True)
class AttentionMetadata:
    """Index tensors for one step, built once by the runner and shared by every layer."""

    slot_mapping: torch.Tensor  # [T] int64: where each new token's K/V is written
    num_decode_tokens: int  # the first num_decode_tokens tokens are decodes, one per sequence
    decode_segments: tuple[DecodeSegment, ...]  # the decode rows, in order, in groups of similar context length
    prefill_q_index: torch.Tensor | None  # [Tp] int64: row of each prefill token in the padded [P * Qmax] queries
    prefill_block_tables: torch.Tensor | None  # [P, blocks] int64: each prefill sequence's blocks, padded with 0
    prefill_mask: torch.Tensor | None  # [P, 1, Qmax, Lp] bool: causal, offset by the cached prefix
    num_prefill_seqs: int = 0
    prefill_max_q: int = 0


@dataclass(frozen=True, slots=True)
class DecodeSegment:
    """Decode rows start..end of a step, padded to the longest context among them, not to the step's longest: one
    long sequence (a 2000-token stream among 64-token ones) would otherwise make every row read 2000 keys."""

    start: int
    end: int
    block_tables: torch.Tensor  # [n, blocks] int64: each sequence's blocks, padded with 0
    context_lens: torch.Tensor  # [n] int64: keys of each sequence, the new one included
    mask: torch.Tensor | None  # [n, 1, 1, L] bool, L = blocks * block_size, for the gather path; None with a kernel
    kernel: DecodeKernel | None  # reads the cache in place; None: gather, then matmuls or SDPA


def split_by_length(context_lens: list[int], block_size: int) -> list[tuple[int, int]]:
    """(start, end) row ranges: a new one begins where a row needs at most a quarter of the blocks of its range's
    first row, so that no range pads its rows to more than 4x their own length when the rows come longest first.
    (At half, a 64-in/64-out load split most steps in two, and the second call per layer cost more than the padding
    it saved: built-in model at 64 streams, 5261 against 5933 tok/s.)"""
    if not context_lens:
        return []
    ranges: list[tuple[int, int]] = []
    start, first_blocks = 0, -(-context_lens[0] // block_size)
    for row, n in enumerate(context_lens):
        blocks = -(-n // block_size)
        if PAD_FACTOR * blocks <= first_blocks:
            ranges.append((start, row))
            start, first_blocks = row, blocks
    ranges.append((start, len(context_lens)))
    return ranges


def gather_context(cache: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
    """cache [kv_heads, num_blocks, block_size, dim], block_tables [S, blocks] -> [kv_heads, S, blocks * block_size,
    dim], contiguous.

    Whole blocks are gathered as the rows of one index_select: several times faster than indexing slot by slot.
    """
    seqs, blocks = block_tables.shape
    kv_heads, num_blocks, block_size, dim = cache.shape
    by_block = cache.view(kv_heads, num_blocks, block_size * dim)
    return by_block.index_select(1, block_tables.flatten()).view(kv_heads, seqs, blocks * block_size, dim)


def build_metadata(
    slot_mapping: list[int],
    decode_block_tables: list[list[int]],
    decode_context_lens: list[int],  # tokens including the new one
    prefill_block_tables: list[list[int]],
    prefill_start_pos: list[int],  # tokens already cached
    prefill_query_lens: list[int],  # new tokens of each chunk
    block_size: int,
    device: torch.device,
    decode_kernel: DecodeKernel | None = None,
) -> AttentionMetadata:
    """Host lists -> index tensors on `device` (each copied once, without waiting on the device)."""

    def to_device(rows: list[int] | list[list[int]]) -> torch.Tensor:
        host = torch.tensor(rows, dtype=torch.int64)
        if device.type == "cuda":
            return host.pin_memory().to(device, non_blocking=True)
        return host.to(device)

    segments = []
    for start, end in split_by_length(decode_context_lens, block_size):
        lens = decode_context_lens[start:end]
        # The gather path's key blocks are bucketed, as SDPA keeps memory per shape; a kernel takes any width.
        kernel = decode_kernel if decode_kernel is not None and end - start >= decode_kernel.min_rows else None
        padded = _pad(decode_block_tables[start:end], lens, block_size, bucketed=kernel is None)
        lens_tensor, mask = to_device(lens), None
        if kernel is None:
            keys = torch.arange(len(padded[0]) * block_size, device=device)
            mask = (keys < lens_tensor.unsqueeze(1))[:, None, None, :]
        segments.append(DecodeSegment(start, end, to_device(padded), lens_tensor, mask, kernel))
    prefill_q_index = prefill_tables = prefill_mask = None
    # Query rows and key blocks padded to buckets, so that SDPA sees a bounded set of shapes (see buckets.py).
    max_q = bucket(max(prefill_query_lens, default=0))
    if prefill_query_lens:
        ends = [s + q for s, q in zip(prefill_start_pos, prefill_query_lens)]
        padded = _pad(prefill_block_tables, ends, block_size, bucketed=True)
        prefill_tables = to_device(padded)
        prefill_q_index = to_device([row * max_q + i for row, q in enumerate(prefill_query_lens) for i in range(q)])
        query_pos = to_device(prefill_start_pos)[:, None] + torch.arange(max_q, device=device)  # [P, Qmax]
        keys = torch.arange(len(padded[0]) * block_size, device=device)
        prefill_mask = (keys <= query_pos.unsqueeze(-1)).unsqueeze(1)  # [P, 1, Qmax, Lp]
    return AttentionMetadata(
        slot_mapping=to_device(slot_mapping),
        num_decode_tokens=len(decode_context_lens),
        decode_segments=tuple(segments),
        prefill_q_index=prefill_q_index,
        prefill_block_tables=prefill_tables,
        prefill_mask=prefill_mask,
        num_prefill_seqs=len(prefill_query_lens),
        prefill_max_q=max_q,
    )


def _pad(tables: list[list[int]], lengths: list[int], block_size: int, bucketed: bool = False) -> list[list[int]]:
    """Each table cut to the blocks its context uses, then padded with block 0 to the longest (or to its bucket)."""
    used = [-(-n // block_size) for n in lengths]
    width = bucket(max(used)) if bucketed else max(used)
    return [table[:n] + [0] * (width - n) for table, n in zip(tables, used)]


def paged_attention(
    q: torch.Tensor,  # [T, heads, dim]
    k: torch.Tensor,  # [T, kv_heads, dim]
    v: torch.Tensor,  # [T, kv_heads, dim]
    k_cache: torch.Tensor,  # [kv_heads, num_blocks, block_size, dim]
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:  # [T, heads, dim]
    kv_heads, _, _, dim = k_cache.shape
    k_cache.view(kv_heads, -1, dim).index_copy_(1, meta.slot_mapping, k.transpose(0, 1))  # slots of [kv_heads, T, dim]
    v_cache.view(kv_heads, -1, dim).index_copy_(1, meta.slot_mapping, v.transpose(0, 1))
    n = meta.num_decode_tokens
    parts = []
    if n:
        parts.append(_decode(q[:n], k_cache, v_cache, meta, scale))
    if meta.num_prefill_seqs:
        parts.append(_prefill(q[n:], k_cache, v_cache, meta, scale))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
            scale: float) -> torch.Tensor:
    """q [B, heads, dim], one query per sequence -> [B, heads, dim], one call per segment of similar lengths."""
    parts = [_decode_segment(q[seg.start:seg.end], k_cache, v_cache, seg, scale) for seg in meta.decode_segments]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _decode_segment(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seg: DecodeSegment,
                    scale: float) -> torch.Tensor:
    batch, heads, dim = q.shape
    kv_heads = k_cache.shape[0]
    # The query heads sharing a kv head become that head's query rows, so K/V are never expanded.
    grouped = q.view(batch, kv_heads, heads // kv_heads, dim)  # [n, kv_heads, group, dim]
    if seg.kernel is not None:
        out = seg.kernel(grouped, k_cache, v_cache, seg.block_tables, seg.context_lens, scale)
        return out.reshape(batch, heads, dim)
    assert seg.mask is not None
    keys = gather_context(k_cache, seg.block_tables)  # [kv_heads, n, L, dim]
    values = gather_context(v_cache, seg.block_tables)
    if q.device.type == "cpu" and q.dtype != torch.float32 and batch >= SMALL_DECODE_BATCH:
        out = _decode_by_matmul(grouped, keys, values, seg.mask, scale)
    else:
        out = F.scaled_dot_product_attention(grouped, keys.transpose(0, 1), values.transpose(0, 1),
                                             attn_mask=seg.mask, scale=scale)
    return out.reshape(batch, heads, dim)


def _decode_by_matmul(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """Attention as two batched matmuls with a float32 softmax, batched over (kv head, sequence):
    q [B, kv_heads, group, dim], keys and values [kv_heads, B, L, dim], mask [B, 1, 1, L] -> like q.

    On CPU in bfloat16, SDPA's flash kernel does poorly with a handful of query rows: at batch 64 and 144 keys
    it took 1987 us per call against 414 us for this (1 thread); in float32 the two were even, so SDPA stays there.
    """
    batch, kv_heads, group, dim = q.shape
    length = keys.shape[2]
    by_head = q.transpose(0, 1).reshape(kv_heads * batch, group, dim)
    scores = torch.bmm(by_head, keys.view(-1, length, dim).transpose(1, 2)).float()  # [kv_heads * B, group, L]
    scores = scores.view(kv_heads, batch, group, length).mul_(scale).masked_fill_(~mask.transpose(0, 1), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(values.dtype).view(-1, group, length)
    out = torch.bmm(probs, values.view(-1, length, dim))  # [kv_heads * B, group, dim]
    return out.view(kv_heads, batch, group, dim).transpose(0, 1)


def _prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
             scale: float) -> torch.Tensor:
    """q [Tp, heads, dim] of every prefill chunk -> [Tp, heads, dim], padded to [P, Qmax] for one SDPA call."""
    assert meta.prefill_block_tables is not None and meta.prefill_mask is not None and meta.prefill_q_index is not None
    tokens, heads, dim = q.shape
    seqs, max_q = meta.num_prefill_seqs, meta.prefill_max_q
    unpadded = seqs == 1 and tokens == max_q  # one chunk of a bucket's length
    if unpadded:
        padded = q.unsqueeze(0)  # [1, Tp, heads, dim]
    else:
        padded = q.new_zeros(seqs * max_q, heads, dim)
        padded.index_copy_(0, meta.prefill_q_index, q)
        padded = padded.view(seqs, max_q, heads, dim)
    keys = gather_context(k_cache, meta.prefill_block_tables).transpose(0, 1)  # [P, kv_heads, Lp, dim]
    values = gather_context(v_cache, meta.prefill_block_tables).transpose(0, 1)
    out = F.scaled_dot_product_attention(
        padded.transpose(1, 2), keys, values, attn_mask=meta.prefill_mask, scale=scale,
        enable_gqa=keys.shape[1] != heads,
    )  # [P, heads, Qmax, dim]
    out = out.transpose(1, 2).reshape(seqs * max_q, heads, dim)
    return out if unpadded else out[meta.prefill_q_index]
