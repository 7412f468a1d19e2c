"""How many torch threads a CPU worker keeps: the fewest that its own model's decode step still scales to.

A worker's fair share of the cores is the most it may use, but on a small host the router, the HTTP clients and the
tokenizer run on the same cores. Threads that add little speed then cost more than they give: each parallel region
waits for its slowest thread, and a thread the router preempted stalls the whole step. On the 2-core development
machine (AMD EPYC, bf16) a decode step at batch 64 ran 1.45-1.57x faster on 2 threads than on 1 for the built-in
7.3M model (13 timings) and 1.73-1.90x for a 97M one (7); served at 64 streams, 1 thread gave the 7.3M model 4301
output tok/s against 3560 on 2, while the 97M model needed both (914 against 584 tok/s, on a Xeon). So a count is
kept only when each added thread brings at least SCALING_EFFICIENCY of a linear speed-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SCALING_EFFICIENCY = 0.65  # 1 -> 2 threads must make the step at least 1.65x faster
MIN_REPEATS = 3
MAX_REPEATS = 20
SECONDS_PER_COUNT = 0.3  # timing budget per candidate count, after one untimed step


def candidate_counts(most: int) -> list[int]:
    """1, then doublings, then `most` itself: 1, 2, 4, 6 for six cores."""
    counts = [1]
    while counts[-1] * 2 < most:
        counts.append(counts[-1] * 2)
    if most > 1:
        counts.append(most)
    return counts


def scales(fewer: int, fewer_s: float, more: int, more_s: float) -> bool:
    """Whether `more` threads pay for themselves against `fewer`: speed-up >= 1 + efficiency x (more/fewer - 1)."""
    return fewer_s >= more_s * (1.0 + SCALING_EFFICIENCY * (more / fewer - 1.0))


def best_step_seconds(run_step: Callable[[], float]) -> float:
    """The fastest of a few timed steps after an untimed one: the least disturbed by whatever shares the CPU."""
    run_step()
    best, repeats, spent = float("inf"), 0, 0.0
    while repeats < MIN_REPEATS or (spent < SECONDS_PER_COUNT and repeats < MAX_REPEATS):
        seconds = run_step()
        best, repeats, spent = min(best, seconds), repeats + 1, spent + seconds
    return best


def pick_thread_count(run_step: Callable[[], float], set_threads: Callable[[int], None],
                      most: int) -> tuple[int, dict[int, float]]:
    """The chosen count (already set) and each candidate's best step time in seconds.

    `run_step` runs one step at the current thread count and returns its duration in seconds.
    """
    times: dict[int, float] = {}
    chosen = 1
    for count in candidate_counts(most):
        set_threads(count)
        times[count] = best_step_seconds(run_step)
        if count > chosen and scales(chosen, times[chosen], count, times[count]):
            chosen = count
    set_threads(chosen)
    return chosen, times
