"""Load levels: a closed loop of N streams, or open-loop Poisson arrivals, fed by a seeded request source."""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass

from benchkit.sse_client import RequestResult, stream_request
from benchkit.workload import PromptMaker, Workload, draw_length, request_body


@dataclass(frozen=True)
class Level:
    concurrency: int | None = None  # closed loop: this many streams at once
    request_rate: float | None = None  # open loop: Poisson arrivals per second (math.inf: all at once)
    max_concurrency: int | None = None  # cap for the open loop
    num_requests: int = 64
    duration: float | None = None  # closed loop only: keep launching for this long instead of num_requests


class RequestSource:
    """Deterministic stream of (body, requested output tokens), built on demand from one seeded RNG."""

    def __init__(self, workload: Workload, model: str, maker: PromptMaker, seed: int) -> None:
        self.workload, self.model, self.maker = workload, model, maker
        self.rng = random.Random(seed)

    def next(self) -> tuple[bytes, int]:
        w = self.workload
        input_len = draw_length(self.rng, w.input_len, w.len_dist, w.len_spread)
        output_len = draw_length(self.rng, w.output_len, w.len_dist, w.len_spread)
        return request_body(w, self.model, self.maker.prompt(self.rng, input_len), output_len), output_len


async def run_level(session, url: str, source: RequestSource, level: Level, progress) -> list[RequestResult]:
    results: list[RequestResult] = []

    def done(result: RequestResult) -> None:
        results.append(result)
        if progress is not None:
            progress.update(1)

    if level.concurrency is not None:
        deadline = None if level.duration is None else time.perf_counter() + level.duration
        launched = 0

        async def closed_loop() -> None:
            nonlocal launched
            while (launched < level.num_requests) if deadline is None else (time.perf_counter() < deadline):
                launched += 1
                body, requested = source.next()
                done(await stream_request(session, url, body, requested))

        await asyncio.gather(*(closed_loop() for _ in range(level.concurrency)))
        return results

    rng = random.Random(source.rng.random())
    cap = asyncio.Semaphore(level.max_concurrency or level.num_requests)
    start, at, tasks = time.perf_counter(), 0.0, []

    async def capped(body: bytes, requested: int) -> None:
        async with cap:
            done(await stream_request(session, url, body, requested))

    for _ in range(level.num_requests):
        if math.isfinite(level.request_rate):
            at += rng.expovariate(level.request_rate)
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        tasks.append(asyncio.create_task(capped(*source.next())))
    await asyncio.gather(*tasks)
    return results
