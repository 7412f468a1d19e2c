"""Sizes rounded up to a few dozen buckets, so that the shapes a step's kernels see form a small, fixed set.

oneDNN's bfloat16 kernels keep memory for every shape they have run, whatever its primitive cache holds: 2000
distinct row counts of one 256 -> 1376 bf16 linear grew a process by 2.3 GB (malloc_trim gave back 1.4 GB of it;
float32 grew nothing), and bf16 SDPA grew it by 1.9 GB over 1500 query lengths. A served step's token count, and its
prefill chunks' lengths, take hundreds of values.

Buckets are exact up to 16, then four to each doubling (20, 24, 28, 32, 40, 48, ...): 48 sizes up to 4096, at most
25% padding. Multiples of 8 up to 512 gave 127 sizes, and a soak-like load on the built-in model kept meeting new ones
for minutes, each adding about half a MB to the worker (110 distinct linear row counts after 4 minutes, RSS still
rising); float32 stayed flat under the same load.
"""

from __future__ import annotations

EXACT_UP_TO = 16


def bucket(n: int) -> int:
    """n rounded up: exact to 16, then to a multiple of a quarter of the power of two at or above it."""
    if n <= EXACT_UP_TO:
        return n
    step = 1 << ((n - 1).bit_length() - 3)
    return -(-n // step) * step


def buckets_up_to(n: int) -> list[int]:
    """Every bucket size a count of 1..n rounds up to."""
    return sorted({bucket(i) for i in range(1, n + 1)})
