"""Linear layers whose weights are prepacked once into oneDNN's blocked layout, for bfloat16 on CPU.

nn.Linear hands oneDNN a plain [out, in] weight, which it reorders into the layout its AMX / AVX512-BF16 kernels read
at every call: the weights cross memory twice per step. Prepacked at load, they cross once. On the 97M Llama (2 threads,
AMX) a 768 -> 2304 projection took 257 -> 148 us at 64 rows and 143 -> 100 us at one row.

A oneDNN bf16 call also costs about 25 us however small it is, where a float32 matmul of a small layer at a few rows
takes 5-15 us (256 -> 768 at one row: 27 against 8 us). So each distinct layer shape is timed both ways at start-up,
at every bucketed row count up to FLOAT32_MAX_ROWS, and keeps a float32 copy of its weight for the counts where
float32 wins clearly. On larger layers it never does, and they keep no copy.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gpu_worker.model.buckets import bucket, buckets_up_to

log = logging.getLogger(__name__)

BATCH_HINT = 64  # rows oneDNN picks the packing for; any row count runs on it (checked at 1..512 rows)
FLOAT32_MAX_ROWS = 64  # past this AMX's bf16 won at every layer shape measured
FLOAT32_MARGIN = 0.8  # float32 is taken at a row count where it costs at most this fraction of the packed call
FLOAT32_STEP_MARGIN = 0.95  # and kept only if a whole one-row step with it costs at most this fraction of one without
TIMING_REPEATS = 5
STEP_ROUNDS = 10


class PackedLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, float32_rows: frozenset[int] = frozenset()):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight.detach(), BATCH_HINT))
        self.register_buffer("bias", None if bias is None else bias.detach())
        self.float32_rows = float32_rows  # bucketed row counts served by the float32 copy
        self.register_buffer("float32_weight", weight.detach().float() if float32_rows else None)
        self.register_buffer("float32_bias", None if bias is None or not float32_rows else bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out]
        rows = x.shape[0]
        padded = bucket(rows)  # a bounded set of row counts: see buckets.py
        if padded in self.float32_rows:
            return F.linear(x.float(), self.float32_weight, self.float32_bias).to(x.dtype)
        if padded != rows:
            x = F.pad(x, (0, 0, 0, padded - rows))  # [padded, in]
        out = torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")
        return out if padded == rows else out[:rows]


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """bfloat16 on a CPU whose oneDNN build has bf16 kernels, and packing that gives F.linear's results."""
    if device.type != "cpu" or dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return False
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 32, generator=generator).to(dtype)
    bias = torch.randn(48, generator=generator).to(dtype)
    rows = torch.randn(5, 32, generator=generator).to(dtype)
    with torch.inference_mode():
        got, expected = PackedLinear(weight, bias)(rows), F.linear(rows, weight, bias)
    if not torch.allclose(got.float(), expected.float(), atol=0.1, rtol=0.02):
        log.warning("oneDNN prepacked linears disagree with F.linear; keeping plain weights")
        return False
    return True


def pack_linears(model: nn.Module) -> int:
    """Swap every nn.Linear of `model` for a PackedLinear in place; how many were swapped."""
    swapped = 0
    float32_rows: dict[tuple[int, int, bool], frozenset[int]] = {}  # timed once per distinct shape
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                shape = (child.in_features, child.out_features, child.bias is not None)
                if shape not in float32_rows:
                    float32_rows[shape] = float32_faster_rows(child.weight, child.bias)
                    log.info("linear %d -> %d: float32 at rows %s", shape[0], shape[1],
                             sorted(float32_rows[shape]) or "none")
                setattr(parent, name, PackedLinear(child.weight, child.bias, float32_rows[shape]))
                swapped += 1
    return swapped


def float32_faster_rows(weight: torch.Tensor, bias: torch.Tensor | None) -> frozenset[int]:
    """The bucketed row counts, up to FLOAT32_MAX_ROWS, at which a float32 matmul beats the packed bf16 call."""
    packed = PackedLinear(weight, bias)
    weight32 = weight.detach().float()
    bias32 = None if bias is None else bias.detach().float()
    faster = set()
    with torch.inference_mode():
        for rows in buckets_up_to(FLOAT32_MAX_ROWS):
            x = torch.randn(rows, weight.shape[1]).to(weight.dtype)
            packed_s = _best_time(lambda: packed(x))
            float32_s = _best_time(lambda: F.linear(x.float(), weight32, bias32).to(x.dtype))
            if float32_s < FLOAT32_MARGIN * packed_s:
                faster.add(rows)
    return frozenset(faster)


def keep_float32_if_faster(model: nn.Module, run_step: Callable[[], float]) -> tuple[bool, float, float]:
    """Whether the float32 copies stay, and a one-row step's best seconds with and without them (taking turns).

    Each layer was timed alone, its weight hot in cache. In a whole step the layers evict each other, and a float32
    weight is twice the bytes to read: on the AMD development machine the built-in model's one-row step took
    1.12-1.29 ms without the copies and 1.20-1.60 ms with them. Dropped copies free their memory."""
    layers = {m: m.float32_rows for m in model.modules() if isinstance(m, PackedLinear) and m.float32_rows}
    if not layers:
        return False, math.nan, math.nan
    best = {True: math.inf, False: math.inf}
    for _ in range(STEP_ROUNDS):
        for with_float32 in (True, False):
            for layer, rows in layers.items():
                layer.float32_rows = rows if with_float32 else frozenset()
            best[with_float32] = min(best[with_float32], run_step())
    keep = best[True] <= FLOAT32_STEP_MARGIN * best[False]
    for layer, rows in layers.items():
        layer.float32_rows = rows if keep else frozenset()
        if not keep:
            layer.float32_weight = layer.float32_bias = None
    return keep, best[True], best[False]


def _best_time(call: Callable[[], object]) -> float:
    """The fastest of a few timed calls after one untimed: the least disturbed by whatever else shares the CPU."""
    call()
    best = float("inf")
    for _ in range(TIMING_REPEATS):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def warm_every_bucket(model: nn.Module, max_rows: int) -> int:
    """Run each distinct PackedLinear shape once at every bucketed row count up to max_rows; how many calls.

    oneDNN keeps memory for each shape it meets (see buckets.py), so meeting them all at start-up puts that memory
    before the first request: a serving worker then stops growing as soon as it starts, instead of creeping up for
    the minutes a load takes to visit its rarer step sizes.
    """
    layers = {(m.in_features, m.out_features): m for m in model.modules() if isinstance(m, PackedLinear)}
    calls = 0
    with torch.inference_mode():
        for layer in layers.values():
            weight = layer.packed_weight
            for rows in buckets_up_to(max_rows):
                layer(torch.zeros(rows, layer.in_features, dtype=weight.dtype, device=weight.device))
                calls += 1
    return calls
