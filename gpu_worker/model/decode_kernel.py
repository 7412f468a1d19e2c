"""Decode attention that reads the paged KV cache where it lies, compiled by torch.compile (inductor) on CPU.

The eager path gathers every sequence's blocks into a contiguous copy and then runs two batched matmuls, so each
key and value crosses memory three times; on the 97M Llama at 64 streams that copy was most of a decode step. Here
attention is written as broadcast products and sums, which inductor fuses with the block-table lookup into loops that
read each key and value once. One graph serves every batch and context size: the sizes that change per step are
marked unbacked, so no size is specialised and nothing recompiles while serving.
"""

from __future__ import annotations

import logging
import time

import torch
import torch._inductor.config

log = logging.getLogger(__name__)


def paged_decode_attention(
    q: torch.Tensor,  # [B, kv_heads, group, dim]
    k_cache: torch.Tensor,  # [kv_heads, num_blocks, block_size, dim]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, blocks] int64
    context_lens: torch.Tensor,  # [B] int64: keys of each sequence, the new one included
    scale: float,
) -> torch.Tensor:  # [B, kv_heads, group, dim]
    kv_heads, _, block_size, dim = k_cache.shape
    batch, blocks = block_tables.shape
    # Keys and values stay split by block: [B, kv_heads, 1, blocks, block_size, dim]. Summing over (block, row) rather
    # than one flat key axis lets inductor vectorise the value sum along dim; flat, it gathered element by element.
    keys = k_cache[:, block_tables].permute(1, 0, 2, 3, 4).unsqueeze(2)
    values = v_cache[:, block_tables].permute(1, 0, 2, 3, 4).unsqueeze(2)
    # [B, kv_heads, group, 1, 1, dim] * keys summed over dim -> [B, kv_heads, group, L], L = blocks * block_size
    scores = (q[:, :, :, None, None, :].float() * keys.float()).sum(-1).flatten(-2) * scale
    is_context = torch.arange(blocks * block_size, device=q.device) < context_lens[:, None, None, None]  # [B, 1, 1, L]
    probs = torch.softmax(torch.where(is_context, scores, float("-inf")), dim=-1)
    # [B, kv_heads, group, blocks, block_size, 1] * values summed over (block, row) -> [B, kv_heads, group, dim]
    weights = probs.view(batch, kv_heads, -1, blocks, block_size, 1)
    return (weights * values.float()).sum((-3, -2)).to(q.dtype)


def probe_inputs(k_cache: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [3, kv_heads, group, dim], block tables and context lengths to check a kernel against the eager formula:
    a row over two blocks, one a block and a key long, and one of a single key."""
    kv_heads, num_blocks, block_size, dim = k_cache.shape
    tables = torch.tensor([[0, 1], [1, 0], [0, 0]], device=k_cache.device).clamp(max=num_blocks - 1)
    lens = torch.tensor([2 * block_size, block_size + 1, 1], device=k_cache.device).clamp(max=num_blocks * block_size)
    q = torch.randn(3, kv_heads, group, dim, device=k_cache.device).to(k_cache.dtype)
    return q, tables, lens


class CompiledDecode:
    """paged_decode_attention under torch.compile, with the per-step sizes left symbolic."""

    min_rows = 8  # below this many decodes, a call costs more than it saves over SDPA

    def __init__(self) -> None:
        self._compiled = torch.compile(paged_decode_attention, dynamic=True)

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                 context_lens: torch.Tensor, scale: float) -> torch.Tensor:
        q = q.contiguous()  # a view into the fused QKV output; one layout keeps one graph
        for tensor, dim in ((q, 0), (block_tables, 0), (block_tables, 1), (context_lens, 0)):
            torch._dynamo.decorators.mark_unbacked(tensor, dim)
        return self._compiled(q, k_cache, v_cache, block_tables, context_lens, scale)


def compiled_decode_or_none(k_cache: torch.Tensor, v_cache: torch.Tensor, group: int) -> CompiledDecode | None:
    """A CompiledDecode, traced on the model's own caches and checked against the eager formula; None (logged) where
    inductor cannot build one, so that the eager path serves instead."""
    dim = k_cache.shape[-1]
    kernel = CompiledDecode()
    # As in a step: index tensors made outside inference mode, q inside (traced otherwise, the graph would recompile).
    _, tables, lens = probe_inputs(k_cache, group)
    start = time.perf_counter()
    try:  # one compile thread: more would start a pool of compiler processes that outlives the compile
        with torch.inference_mode(), torch._inductor.config.patch(compile_threads=1):
            q = probe_inputs(k_cache, group)[0]
            got = kernel(q, k_cache, v_cache, tables, lens, dim**-0.5)
            expected = paged_decode_attention(q, k_cache, v_cache, tables, lens, dim**-0.5)
    except Exception as exc:  # inductor needs a C++ compiler on CPU; without one the eager path serves
        log.warning("compiled decode attention unavailable (%s: %s); using the eager path", type(exc).__name__, exc)
        return None
    tolerance = 1e-4 if k_cache.dtype == torch.float32 else 2e-2
    if not torch.allclose(got.float(), expected.float(), atol=tolerance, rtol=tolerance):
        log.warning("compiled decode attention disagrees with the eager formula; using the eager path")
        return None
    log.info("compiled decode attention ready in %.1f s", time.perf_counter() - start)
    return kernel
