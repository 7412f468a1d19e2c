"""The prompt tokens a CPU step that decodes may take, solved from start-up timings."""

from __future__ import annotations

from gpu_worker.calibration import choose_prefill_cap, prefill_cap_from_timings
from gpu_worker.config import BUILTIN_MODEL_DIR
from gpu_worker.model_runner import TorchRunner


def test_a_slow_prompt_token_gets_the_tokens_of_two_decode_steps():
    # The 97M model on 2 AMX cores: a decode step of 64 rows 34 ms; 64 prompt tokens 20.7 ms, 512 81.4 ms.
    cap = prefill_cap_from_timings(0.034, {64: 0.0207, 512: 0.0814}, block_size=16, most=2048)
    assert cap == 400  # (2 * 34 - 12.0) ms at 0.1355 ms a token, down to a whole block


def test_a_step_under_the_floor_is_not_capped():
    # The built-in model: a decode step of 3.2 ms, 2048 prompt tokens in about 15 ms.
    assert prefill_cap_from_timings(0.0032, {64: 0.0021, 512: 0.0060}, block_size=16, most=2048) == 2048


def test_the_cap_is_at_least_a_block_and_at_most_the_step_budget():
    assert prefill_cap_from_timings(0.030, {64: 0.5, 512: 0.9}, block_size=16, most=2048) == 16
    assert prefill_cap_from_timings(0.030, {64: 0.001, 512: 0.002}, block_size=16, most=512) == 512
    assert prefill_cap_from_timings(0.030, {64: 0.010}, block_size=16, most=2048) == 384  # one point: no fixed cost


def test_the_runner_times_its_cap_on_scratch_blocks():
    runner = TorchRunner(BUILTIN_MODEL_DIR, dtype="float32", num_kv_blocks=64, max_running=8, threads=1)
    cap = choose_prefill_cap(runner, most=1024)
    assert 16 <= cap <= 1024 and cap % 16 == 0
    assert runner.sampler._generators == {}  # the scratch sequences were released
