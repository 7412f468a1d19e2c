"""Disconnect storm: many streams, each dropped by its client at a random moment (queued, mid-prefill or
mid-stream).

Bars: within 1 s of the last drop nothing runs, waits or holds a KV block on any worker; router and worker RSS after
the storm equal RSS before it within 5%. "Before" is taken after warm-up storms of the same size, repeated until
one grows RSS by less than 2% (at most 4), so that the allocators' high-water mark is not counted as a leak; a leak
grows every storm and never settles. The growth from cold is reported too.
"""

from __future__ import annotations

import asyncio
import random
import time

from .client import completion_body, session
from .report import Options, Result
from .server import context_length, family, metrics, pool_idle, process_rss, workers

STREAMS = 1000
DROP_WITHIN_S = 3.0
IDLE_BAR_S = 1.0
RSS_TOLERANCE = 0.05
SETTLED = 0.02  # a warm-up storm that grew RSS by less than this reached the allocators' high-water mark
MAX_WARMUPS = 4


async def run(start, opt: Options) -> Result:
    streams = opt.count(STREAMS)
    server = start(*opt.serve_args("--max-running-per-worker", "512", "--max-queue", str(2 * streams)))
    rng = random.Random(opt.seed)
    async with session() as http, session() as observer:
        pids = [w["pid"] for w in await workers(observer, server.url)]
        body = completion_body(server.model, min(3000, await context_length(observer, server.url) - 64), stream=True,
                               prompt="a long story")
        cold = process_rss(server, pids)
        before, warmups = await warm_up(http, observer, server, pids, body, streams, rng)
        last_drop, refused = await storm(http, server, body, streams, rng)
        idle_after = await until_idle(observer, server.url, 30) - last_drop
        after = process_rss(server, pids)
        samples = await metrics(observer, server.url)
        pids_after = [w["pid"] for w in await workers(observer, server.url)]

    result = Result("disconnect-storm", {"streams": streams, "warmup_storms": warmups, "refused": refused,
                                         "idle_after_last_drop_s": idle_after})
    for name in before:
        result.figures[f"{name}_rss_mb"] = f"{before[name]:.1f}->{after[name]:.1f}"
    growth = max(abs(after[k] - before[k]) / before[k] for k in before)
    result.figures["max_rss_change_pct"] = 100 * growth
    result.figures["warmup_rss_growth_pct"] = 100 * max((before[k] - cold[k]) / cold[k] for k in cold)
    result.figures["cancelled_metric"] = samples.get('gpupool_requests_total{outcome="cancelled",status="499"}', 0.0)
    result.figures["bad_frames"] = family(samples, "gpupool_bad_frames_total")
    result.check(f"idle (running 0, waiting 0, KV 0) within {IDLE_BAR_S:g} s", idle_after <= IDLE_BAR_S, timing=True)
    result.check(f"RSS after within {100 * RSS_TOLERANCE:g}% of before", growth <= RSS_TOLERANCE)
    result.check("no worker died", pids_after == pids)
    result.check("every stream was admitted (200, or dropped before its headers)", refused == 0)
    return result


async def warm_up(http, observer, server, pids, body: dict, streams: int, rng) -> tuple[dict[str, float], int]:
    """Storms until one grows no process's RSS by more than SETTLED (at most MAX_WARMUPS): the RSS then, and how many
    storms it took. The router on uvloop reached its high-water mark only in the second or third storm."""
    rss = process_rss(server, pids)
    for warmups in range(1, MAX_WARMUPS + 1):
        await storm(http, server, body, streams, rng)
        await until_idle(observer, server.url, 30)
        previous, rss = rss, process_rss(server, pids)
        if warmups > 1 and all(rss[k] - previous[k] <= SETTLED * previous[k] for k in rss):
            break
    return rss, warmups


async def storm(http, server, body: dict, streams: int, rng: random.Random) -> tuple[float, int]:
    """Start `streams` long streams at once and drop each at a random moment; the time of the last drop, and how
    many streams were answered with anything but 200."""
    drops: list[float] = []
    refused = 0

    async def dropped_stream(delay: float) -> None:
        nonlocal refused
        response = None
        try:
            async with asyncio.timeout(delay):
                response = await http.post(server.url + "/v1/completions", json=body)
                refused += response.status != 200
                async for _ in response.content:
                    pass
        except TimeoutError:
            pass
        finally:
            if response is not None:
                response.close()
            drops.append(time.monotonic())

    await asyncio.wait_for(asyncio.gather(*(dropped_stream(rng.uniform(0, DROP_WITHIN_S)) for _ in range(streams))),
                           DROP_WITHIN_S + 60)
    return max(drops), refused


async def until_idle(http, url: str, timeout: float) -> float:
    """When the pool was first seen idle (polled every 20 ms); raises past `timeout`."""
    deadline = time.monotonic() + timeout
    while not await pool_idle(http, url):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the pool was not idle within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic()
