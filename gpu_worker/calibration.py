"""Start-up timings of a CPU runner, on scratch blocks before the engine has allocated any: how many threads its
decode step still scales to, whether its small linears keep float32 copies, and how many prompt tokens a step that
decodes may take."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch

from gpu_worker.batch import ScheduledChunk
from gpu_worker.model.packed_linear import keep_float32_if_faster
from gpu_worker.model_runner import TorchRunner
from gpu_worker.thread_count import pick_thread_count
from protocol.messages import SamplingParams

log = logging.getLogger(__name__)

THREAD_TUNING_BATCH = 64  # decodes per timed step: a full serving batch, where threads matter most
THREAD_TUNING_CONTEXT = 64
PROMPT_PROBE_LEN = 64  # prompt tokens per probed sequence: the benchmark prompt
PROMPT_PROBE_COUNTS = (1, 8)  # prompts per probed step: two points of step time against prompt tokens
# Below this a step is not worth capping: the built-in model's ITL p99 at 64 streams was 29-37 ms uncapped (2048
# prompt tokens, a 15 ms step) and 30-31 ms at 192, where TTFT p99 rose from 108-129 to 142-184 ms.
PREFILL_CAP_FLOOR_S = 0.020
# The prompt tokens of a step that decodes may cost this many decode steps. 97M, 64 streams, 512 requests, 3 runs
# each: at 1 (160 tokens) TTFT p99 was 0.98-1.11 s and ITL p99 83-93 ms; at about 2 (416) 0.79-0.89 s and 123-140 ms.
PREFILL_DECODE_RATIO = 2.0


def tune_threads(runner: TorchRunner, most: int | None = None) -> int:
    """On CPU: time a decode step at up to `most` threads (default: the current count) and keep the fewest it
    still scales to (see thread_count.py)."""
    most = most or torch.get_num_threads()
    if runner.device.type != "cpu" or most <= 1:
        return torch.get_num_threads()
    chunks = scratch_decodes(runner)
    if not chunks:
        return torch.get_num_threads()
    chosen, times = pick_thread_count(step_timer(runner, chunks), torch.set_num_threads, most)
    for chunk in chunks:
        runner.release(chunk.seq_id)
    log.info("threads: %d of at most %d (decode step at batch %d: %s)", chosen, most, len(chunks),
             ", ".join(f"{count} -> {seconds * 1000:.2f} ms" for count, seconds in times.items()))
    return chosen


def choose_small_linears(runner: TorchRunner) -> None:
    """Keep the float32 copies of the small layers only where a whole one-row decode step is faster with them."""
    chunks = scratch_decodes(runner)[:1]
    if not runner.packed or not chunks:
        return
    keep, with_s, without_s = keep_float32_if_faster(runner.model, step_timer(runner, chunks))
    runner.release(chunks[0].seq_id)
    if not math.isnan(with_s):
        log.info("small linears in %s (one-row step: %.2f ms with float32 copies, %.2f ms without)",
                 "float32" if keep else "bfloat16", with_s * 1000, without_s * 1000)


def choose_prefill_cap(runner: TorchRunner, most: int) -> int:
    """The prompt tokens that cost about PREFILL_DECODE_RATIO decode steps at a full batch (or at least
    PREFILL_CAP_FLOOR_S), so a step that decodes and prefills takes about three plain ones: prompt tokens are cheap
    next to decode rows on a GPU, not on a CPU."""
    decodes = scratch_decodes(runner)
    decode_s = median_time(step_timer(runner, decodes))
    for chunk in decodes:
        runner.release(chunk.seq_id)
    points = {}
    for count in PROMPT_PROBE_COUNTS:
        prompts = scratch_prompts(runner, count)
        points[len(prompts) * PROMPT_PROBE_LEN] = median_time(step_timer(runner, prompts))
        for chunk in prompts:
            runner.release(chunk.seq_id)
    cap = prefill_cap_from_timings(decode_s, points, runner.block_size, most)
    log.info("prefill cap: %d prompt tokens in a step that decodes (decode step at batch %d: %.2f ms; prefill: %s)",
             cap, len(decodes), decode_s * 1000, ", ".join(f"{n} -> {s * 1000:.2f} ms" for n, s in points.items()))
    return cap


def prefill_cap_from_timings(decode_s: float, prefill_s: dict[int, float], block_size: int, most: int) -> int:
    """Fit prefill time as fixed + per-token cost over the probed token counts, then solve for the step budget."""
    points = sorted(prefill_s.items())
    (n1, t1), (n2, t2) = points[0], points[-1]
    per_token = max((t2 - t1) / (n2 - n1), 1e-9) if n2 > n1 else t2 / n2
    fixed = max(t1 - per_token * n1, 0.0)
    tokens = (max(decode_s * PREFILL_DECODE_RATIO, PREFILL_CAP_FLOOR_S) - fixed) / per_token
    return max(block_size, min(most, int(tokens) // block_size * block_size))


def median_time(run_step: Callable[[], float], repeats: int = 3) -> float:
    run_step()  # the first run of a shape builds its kernels
    return sorted(run_step() for _ in range(repeats))[repeats // 2]


def step_timer(runner: TorchRunner, chunks: list[ScheduledChunk]) -> Callable[[], float]:
    def run_step() -> float:
        start = time.perf_counter()
        runner.run(chunks)
        return time.perf_counter() - start
    return run_step


def scratch_decodes(runner: TorchRunner) -> list[ScheduledChunk]:
    """One greedy decode per sequence, each on its own scratch blocks: as many as fit, up to a full batch."""
    context = max(1, min(THREAD_TUNING_CONTEXT, runner.context_length - 1))
    blocks = math.ceil((context + 1) / runner.block_size)
    batch = min(THREAD_TUNING_BATCH, runner.max_running, runner.num_kv_blocks // blocks)
    greedy, token = SamplingParams(temperature=0.0), probe_token(runner)
    # Shuffled, as a served cache's blocks are after a while: attention then waits on memory, which more threads
    # hide better (97M, batch 64: 1.96x on 2 threads with shuffled blocks, 1.67x with consecutive ones).
    shuffled = torch.randperm(runner.num_kv_blocks, generator=torch.Generator().manual_seed(0)).tolist()
    return [ScheduledChunk(-1 - i, [token], context, shuffled[i * blocks:(i + 1) * blocks], True, greedy)
            for i in range(batch)]


def scratch_prompts(runner: TorchRunner, count: int) -> list[ScheduledChunk]:
    """`count` prompts of PROMPT_PROBE_LEN tokens, as many as the scratch blocks and the step budget hold."""
    length = max(1, min(PROMPT_PROBE_LEN, runner.context_length - 1, runner.max_batched_tokens))
    blocks = math.ceil(length / runner.block_size)
    count = max(1, min(count, runner.num_kv_blocks // blocks, runner.max_batched_tokens // length))
    greedy, token = SamplingParams(temperature=0.0), probe_token(runner)
    return [ScheduledChunk(-1 - i, [token] * length, 0, list(range(i * blocks, (i + 1) * blocks)), True, greedy)
            for i in range(count)]


def probe_token(runner: TorchRunner) -> int:
    return min(5, runner.model_config.vocab_size - 1)
