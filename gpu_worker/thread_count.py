"""How many torch threads a CPU worker keeps: the fewest that its own model's decode step still scales to.

A worker's fair share of the cores is the most it may use, but on a small host the router, the HTTP clients and the
tokenizer run on the same cores. Threads that add little speed then cost more than they give: each parallel region
waits for its slowest thread, and a thread the router preempted stalls the whole step. On the 2-core development
machine (AMD EPYC, bf16), timed as here (turns, fastest of each), a decode step at batch 64 ran 1.41-1.45x faster on
2 threads than on 1 for the built-in 7.3M model and 1.84x for a 97M one. Served at 64 streams, 1 thread gives the
7.3M model about 5700 output tok/s and 2 threads about 5200 (the router streams ten times the 97M model's tokens and
needs the second core), while the 97M model needs both (914 against 584 tok/s, on a Xeon). So a count is kept only
when each added thread brings at least SCALING_EFFICIENCY of a linear speed-up; 0.5 let the 7.3M model's noisier
timings over the line now and then.
"""

from __future__ import annotations

from collections.abc import Callable

SCALING_EFFICIENCY = 0.6  # 1 -> 2 threads must make the step at least 1.6x faster
MIN_ROUNDS = 3
MAX_ROUNDS = 20
SECONDS_PER_COUNT = 0.5  # timing budget per candidate count, after one untimed step at each


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


def best_step_seconds(run_step: Callable[[], float], set_threads: Callable[[int], None],
                      counts: list[int]) -> dict[int, float]:
    """Each count's fastest step, the counts taking turns round by round, so that a slow spell of the machine
    (other processes, a busy neighbour) falls on all of them alike; the fastest is the least disturbed."""
    for count in counts:
        set_threads(count)
        run_step()
    best = dict.fromkeys(counts, float("inf"))
    spent, rounds = 0.0, 0
    while rounds < MIN_ROUNDS or (spent < SECONDS_PER_COUNT * len(counts) and rounds < MAX_ROUNDS):
        for count in counts:
            set_threads(count)
            seconds = run_step()
            best[count] = min(best[count], seconds)
            spent += seconds
        rounds += 1
    return best


def pick_thread_count(run_step: Callable[[], float], set_threads: Callable[[int], None],
                      most: int) -> tuple[int, dict[int, float]]:
    """The chosen count (already set) and each candidate's best step time in seconds.

    `run_step` runs one step at the current thread count and returns its duration in seconds.
    """
    times = best_step_seconds(run_step, set_threads, candidate_counts(most))
    chosen = 1
    for count in times:
        if count > chosen and scales(chosen, times[chosen], count, times[count]):
            chosen = count
    set_threads(chosen)
    return chosen, times
