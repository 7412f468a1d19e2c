"""The CPU worker's thread count: the fewest threads its decode step still scales to."""

from __future__ import annotations

import pytest
import torch

from gpu_worker.calibration import tune_threads
from gpu_worker.config import BUILTIN_MODEL_DIR
from gpu_worker.model_runner import TorchRunner
from gpu_worker.thread_count import candidate_counts, pick_thread_count


def test_candidates_are_one_doublings_and_the_most():
    assert candidate_counts(1) == [1]
    assert candidate_counts(2) == [1, 2]
    assert candidate_counts(6) == [1, 2, 4, 6]
    assert candidate_counts(8) == [1, 2, 4, 8]


def pick(step_ms: dict[int, float], most: int) -> tuple[int, list[int]]:
    """Pick with a step whose duration depends only on the current thread count; the counts it set, in order."""
    current = [1]
    history: list[int] = []

    def set_threads(count: int) -> None:
        current[0] = count
        history.append(count)

    chosen, times = pick_thread_count(lambda: step_ms[current[0]] / 1000, set_threads, most)
    assert times == {count: step_ms[count] / 1000 for count in candidate_counts(most)}
    return chosen, history


@pytest.mark.parametrize(("step_ms", "most", "expected"), [
    ({1: 8.6, 2: 5.9}, 2, 1),  # the 7.3M model on 2 cores: 1.46x
    ({1: 10.0, 2: 6.4}, 2, 1),  # 1.56x: under the bar of 1.6x
    ({1: 98.0, 2: 54.0}, 2, 2),  # the 97M model: 1.81x
    ({1: 10.0, 2: 10.5}, 2, 1),  # slower on more threads
    ({1: 100.0, 2: 52.0, 4: 27.0, 8: 20.0}, 8, 4),  # scales to 4, not to 8
    ({1: 100.0, 2: 70.0, 4: 29.0, 8: 28.0}, 8, 4),  # 2 is not worth it, 4 is (3.4x over 1)
])
def test_keeps_the_fewest_threads_that_scale(step_ms, most, expected):
    chosen, history = pick(step_ms, most)
    assert chosen == expected
    assert history[-1] == expected  # left set


def test_runner_tunes_its_threads_on_scratch_blocks():
    before = torch.get_num_threads()
    try:
        runner = TorchRunner(BUILTIN_MODEL_DIR, dtype="float32", num_kv_blocks=64, max_running=8, threads=2)
        chosen = tune_threads(runner)
        assert chosen in (1, 2)
        assert torch.get_num_threads() == chosen
        assert runner.sampler._generators == {}  # the scratch sequences were released
        runner.warmup()  # the engine then starts from a clean cache
    finally:
        torch.set_num_threads(before)
