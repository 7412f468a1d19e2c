"""Worker kill: kill -9 a random ready worker at a steady interval under a closed loop of streams.

Bars: no request hangs (each ends before its client deadline); every request that had not started when its worker
died still completes (0 lost); each killed worker comes back.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter

from .client import completion_body, request, session
from .report import Options, Result, percentile
from .server import metrics, workers

FULL_DURATION_S = 120.0
KILLS = 12  # one every 10 s over the full two minutes
STREAMS = 64
REQUEST_TIMEOUT_S = 60.0
CLIENT_GRACE_S = 10.0
RECOVERY_DEADLINE_S = 90.0


async def run(start, opt: Options) -> Result:
    duration = opt.seconds(FULL_DURATION_S)
    interval = duration / KILLS
    streams = opt.count(STREAMS)
    server = start(*opt.serve_args("--request-timeout", str(REQUEST_TIMEOUT_S)))
    rng = random.Random(opt.seed)
    outcomes: Counter[str] = Counter()
    lost_codes: Counter[str] = Counter()
    recoveries: list[float] = []
    stop_at = time.monotonic() + duration

    async with session() as http:
        async def client() -> None:
            while time.monotonic() < stop_at:
                max_tokens = rng.randint(16, 256)
                o = await request(http, server.url, "/v1/completions",
                                  completion_body(server.model, max_tokens, stream=True),
                                  REQUEST_TIMEOUT_S + CLIENT_GRACE_S)
                kind = classify(o, max_tokens)
                outcomes[kind] += 1
                if kind == "lost":
                    lost_codes[f"{o.status}:{o.error}"] += 1

        async def recovered(victim: dict, killed_at: float) -> None:
            deadline = killed_at + RECOVERY_DEADLINE_S
            while time.monotonic() < deadline:
                slot = (await workers(http, server.url))[victim["worker_id"]]
                if slot["state"] == "ready" and slot["epoch"] > victim["epoch"]:
                    recoveries.append(time.monotonic() - killed_at)
                    return
                await asyncio.sleep(0.1)

        clients = [asyncio.create_task(client()) for _ in range(streams)]
        watchers, skipped = [], 0
        for tick in range(1, KILLS + 1):
            await asyncio.sleep(max(0.0, stop_at - duration + tick * interval - interval / 2 - time.monotonic()))
            ready = [w for w in await workers(http, server.url) if w["state"] == "ready"]
            if not ready:
                skipped += 1
                continue
            victim = rng.choice(ready)
            os.kill(victim["pid"], signal.SIGKILL)
            watchers.append(asyncio.create_task(recovered(victim, time.monotonic())))
        await asyncio.gather(*clients)
        await asyncio.gather(*watchers)
        samples = await metrics(http, server.url)

    kills = len(watchers)
    redispatched = sum(int(line.split("re-dispatching ")[1].split()[0])
                       for line in server.lines if "re-dispatching " in line)
    result = Result("worker-kill", {
        "duration_s": duration, "streams": streams, "kills": kills, "skipped_ticks": skipped,
        "recovered": len(recoveries), "recovery_p50_s": percentile(recoveries, 50),
        "recovery_max_s": max(recoveries, default=float("nan")),
        "requests": sum(outcomes.values()), "completed": outcomes["completed"],
        "failed_after_start": outcomes["failed_after_start"], "redispatched": redispatched,
        "lost": outcomes["lost"], "hung": outcomes["hung"], "other": outcomes["other"],
        "restarts_metric": samples.get("gpupool_worker_restarts_total", 0.0),
    })
    if lost_codes:
        result.figures["lost_as"] = dict(lost_codes)
    result.check("0 requests hang", outcomes["hung"] == 0)
    result.check("0 unstarted requests lost", outcomes["lost"] == 0)
    result.check("no unexpected outcome", outcomes["other"] == 0)
    result.check("at least one kill", kills >= 1)
    result.check("every killed worker came back", len(recoveries) == kills
                 and samples.get("gpupool_worker_restarts_total") == kills)
    return result


def classify(o, max_tokens: int) -> str:
    if o.hung:
        return "hung"
    if o.ok and o.completion_tokens == max_tokens:
        return "completed"
    if o.started and o.error == "worker_failed" and o.done:
        return "failed_after_start"  # injected: the worker died mid-stream and the stream ended with an error
    if not o.started:
        return "lost"
    return "other"
