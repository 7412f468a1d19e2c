"""Decode attention in C (csrc/paged_decode.c), built at start-up with the system's C compiler and called through
ctypes on the tensors' memory.

Inductor's kernel (decode_kernel.py) reads the cache in place too, but spends most of its time around the reads: a
horizontal sum per key and query head, and a pass over memory per softmax stage. The C loop reads each key and value
row once for all the query heads that share it, keeps the scores of one (sequence, kv head) in cache, and takes no
compile of torch's own. The library is built once per source, dtype and compiler (native_build.py).
"""

from __future__ import annotations

import ctypes
import logging
import time

import torch

from gpu_worker.model.native_build import CSRC, load_library

log = logging.getLogger(__name__)

SOURCE = CSRC / "paged_decode.c"
SYMBOLS = {torch.bfloat16: ("paged_decode_bf16", ("-DPAGED_BF16",)), torch.float32: ("paged_decode_f32", ())}


class NativeDecode:
    """The C decode attention, with the DecodeKernel signature of attention.py."""

    min_rows = 1  # a call costs a few microseconds, so it serves a single decode too

    def __init__(self, function: ctypes._CFuncPtr) -> None:
        self._function = function

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                 context_lens: torch.Tensor, scale: float) -> torch.Tensor:
        q = q.contiguous()  # [B, kv_heads, group, dim]; a view into the fused QKV output otherwise
        batch, kv_heads, group, dim = q.shape
        _, num_blocks, block_size, _ = k_cache.shape
        out = torch.empty_like(q)
        status = self._function(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), block_tables.data_ptr(),
                                context_lens.data_ptr(), out.data_ptr(), batch, kv_heads, group, dim, num_blocks,
                                block_size, block_tables.shape[1], scale)
        if status != 0:
            raise MemoryError("native decode attention could not allocate its scratch memory")
        return out


def native_decode_or_none(k_cache: torch.Tensor, v_cache: torch.Tensor, group: int) -> NativeDecode | None:
    """A NativeDecode for these caches, checked against the eager formula; None (logged) where it cannot be built
    or does not agree, so that another path serves instead."""
    from gpu_worker.model.decode_kernel import paged_decode_attention, probe_inputs

    if k_cache.device.type != "cpu" or k_cache.dtype not in SYMBOLS or not k_cache.is_contiguous():
        return None
    start = time.perf_counter()
    symbol, defines = SYMBOLS[k_cache.dtype]
    library = load_library(SOURCE, "native decode attention", defines)
    if library is None:
        return None
    kernel = NativeDecode(_typed(getattr(library, symbol)))
    with torch.inference_mode():
        q, tables, lens = probe_inputs(k_cache, group)
        got = kernel(q, k_cache, v_cache, tables, lens, q.shape[-1] ** -0.5)
        expected = paged_decode_attention(q, k_cache, v_cache, tables, lens, q.shape[-1] ** -0.5)
    tolerance = 1e-4 if k_cache.dtype == torch.float32 else 2e-2
    if not torch.allclose(got.float(), expected.float(), atol=tolerance, rtol=tolerance):
        log.warning("native decode attention disagrees with the eager formula; not using it")
        return None
    log.info("native decode attention ready in %.2f s", time.perf_counter() - start)
    return kernel


def _typed(function: ctypes._CFuncPtr) -> ctypes._CFuncPtr:
    function.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 7 + [ctypes.c_float]
    function.restype = ctypes.c_int
    return function
