"""Sizes rounded up to a few hundred buckets, so that the shapes a step's kernels see form a small, fixed set.

oneDNN's bfloat16 kernels keep memory for every shape they have run, whatever its primitive cache holds: 2000
distinct row counts of one 256 -> 1376 bf16 linear grew a process by 2.3 GB (malloc_trim gave back 1.4 GB of it;
float32 grew nothing), and bf16 SDPA grew it by 1.9 GB over 1500 query lengths. A served step's token count, and its
prefill chunks' lengths, take hundreds of values.
"""

from __future__ import annotations


def bucket(n: int) -> int:
    """n rounded up: exact to 8, then to a multiple of 8 up to 512, of 64 up to 4096, of 512 beyond."""
    if n <= 8:
        return n
    step = 8 if n <= 512 else 64 if n <= 4096 else 512
    return -(-n // step) * step
