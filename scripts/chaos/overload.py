"""Overload burst: for the burst's duration, requests arrive at ten times the rate that fits (the running slots of
every worker divided by the time a full wave of that many requests takes, measured first), open loop.

Bars: every answer is 200 or 503; every 503 carries Retry-After and its p99 latency is under 50 ms; every admitted
request completes; router RSS stays bounded (its last sample within 10% of its first, sampled every second).
"""

from __future__ import annotations

import asyncio
import time

from .client import completion_body, request, session
from .report import Options, Result, percentile
from .server import process_rss, workers

FULL_DURATION_S = 30.0
RUNNING_PER_WORKER, QUEUE = 8, 16
OVERLOAD = 10
MAX_TOKENS = 20
P99_BAR_S = 0.050
RSS_GROWTH = 0.10
DEADLINE_S = 60.0


async def run(start, opt: Options) -> Result:
    duration = opt.seconds(FULL_DURATION_S)
    server = start(*opt.serve_args("--max-running-per-worker", str(RUNNING_PER_WORKER), "--max-queue", str(QUEUE)))
    slots = RUNNING_PER_WORKER * len(opt.devices.split(","))
    async with session() as http:
        pids = [w["pid"] for w in await workers(http, server.url)]
        # What fits: a full wave of `slots` requests at once, timed together. One request alone overstates it on a
        # compute-bound model, whose step grows with the batch (the built-in model: 65 ms alone, far more in a batch).
        body = completion_body(server.model, MAX_TOKENS, stream=False)
        wave_began = time.monotonic()
        await asyncio.gather(*(request(http, server.url, "/v1/completions", body, DEADLINE_S) for _ in range(slots)))
        service_s = time.monotonic() - wave_began
        fits_rate = slots / service_s
        rate = OVERLOAD * fits_rate * opt.scale
        tasks, rss = [], []
        began = time.monotonic()
        next_sample = began + 1.0
        for i in range(int(rate * duration)):
            await asyncio.sleep(max(0.0, began + i / rate - time.monotonic()))
            body = completion_body(server.model, MAX_TOKENS, stream=i % 2 == 1)
            tasks.append(asyncio.create_task(request(http, server.url, "/v1/completions", body, DEADLINE_S)))
            if time.monotonic() >= next_sample:
                rss.append(process_rss(server, pids)["router"])
                next_sample += 1.0
        sent_s = time.monotonic() - began
        outcomes = await asyncio.gather(*tasks)

    statuses: dict[int, int] = {}
    for o in outcomes:
        statuses[o.status] = statuses.get(o.status, 0) + 1
    rejected = [o for o in outcomes if o.status == 503]
    admitted = [o for o in outcomes if o.status != 503]
    complete = [o for o in admitted if o.ok and o.completion_tokens == MAX_TOKENS]
    latencies = [o.elapsed for o in rejected]
    rss = rss or [float("nan")]
    result = Result("overload-burst", {
        "duration_s": duration, "service_s": service_s, "fits_per_s": fits_rate, "offered_per_s": rate,
        "achieved_per_s": len(outcomes) / sent_s, "offered": len(outcomes), "ok_200": len(complete),
        "rejected_503": len(rejected), "other": {s: n for s, n in statuses.items() if s not in (200, 503)} or 0,
        "p50_503_ms": 1000 * percentile(latencies, 50), "p99_503_ms": 1000 * percentile(latencies, 99),
        "router_rss_mb": f"{rss[0]:.1f}->{max(rss):.1f}->{rss[-1]:.1f}",
    })
    result.check("only 200 and 503", set(statuses) <= {200, 503})
    result.check("some excess was refused", len(rejected) > 0)
    result.check("every 503 has Retry-After", all(o.retry_after and o.error == "overloaded" for o in rejected))
    result.check("every admitted request completed", len(complete) == len(admitted))
    result.check(f"503 p99 < {1000 * P99_BAR_S:g} ms", percentile(latencies, 99) < P99_BAR_S, timing=True)
    result.check(f"router RSS bounded (last within {100 * RSS_GROWTH:g}% of first)", rss[-1] <= rss[0] * (1 + RSS_GROWTH))
    return result
