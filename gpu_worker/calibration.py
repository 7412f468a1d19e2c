"""Start-up timings of a CPU runner, on scratch blocks before the engine has allocated any: how many threads its
decode step still scales to, and whether its small linears keep float32 copies."""

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
    greedy = SamplingParams(temperature=0.0)
    token = min(5, runner.model_config.vocab_size - 1)
    # Shuffled, as a served cache's blocks are after a while: attention then waits on memory, which more threads
    # hide better (97M, batch 64: 1.96x on 2 threads with shuffled blocks, 1.67x with consecutive ones).
    shuffled = torch.randperm(runner.num_kv_blocks, generator=torch.Generator().manual_seed(0)).tolist()
    return [ScheduledChunk(-1 - i, [token], context, shuffled[i * blocks:(i + 1) * blocks], True, greedy)
            for i in range(batch)]
