"""Hung worker: SIGSTOP a worker that has work, so it stops stepping (and stops sending heartbeats).

Bars: the router notices within the progress (stall) timeout; the frozen worker's started streams end with a
worker_failed error and [DONE]; its unstarted requests and every other request complete; it is replaced by a new
process that serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time

from .client import completion_body, request, session
from .report import Options, Result
from .server import workers

FREEZES = 3
STALL_TIMEOUT_S = 3.0
DETECTION_SLACK_S = 1.0  # the watchdog's 0.25 s tick, one step, and scheduling on a busy machine
PER_WORKER = 6
DEADLINE_S = 60.0


async def run(start, opt: Options) -> Result:
    server = start(*opt.serve_args("--stall-timeout", str(STALL_TIMEOUT_S), "--max-running-per-worker",
                                   str(PER_WORKER + 2)))
    rng = random.Random(opt.seed)
    detections, replaced, failed_ok, completed, other = [], 0, 0, 0, []
    freezes = opt.count(FREEZES)
    async with session() as http:
        for _ in range(freezes):
            victim = rng.choice(await workers(http, server.url))
            n = PER_WORKER * len(opt.devices.split(","))
            started = [asyncio.Event() for _ in range(n)]
            long = completion_body(server.model, 300, stream=True)
            streams = [asyncio.create_task(request(http, server.url, "/v1/completions", long, DEADLINE_S, on_start=e))
                       for e in started]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), DEADLINE_S)
            os.kill(victim["pid"], signal.SIGSTOP)
            frozen_at = time.monotonic()
            short = completion_body(server.model, 5, stream=False)
            late = [asyncio.create_task(request(http, server.url, "/v1/completions", short, DEADLINE_S))
                    for _ in range(4)]  # some are sent to the frozen worker and never start there
            detections.append(await _detected(http, server.url, victim, frozen_at))
            replaced += await _replaced(http, server.url, victim)
            with contextlib.suppress(ProcessLookupError):  # the router killed it; never leave a stopped process
                os.kill(victim["pid"], signal.SIGKILL)
            for o in await asyncio.gather(*streams):
                if o.ok and o.completion_tokens == 300:
                    completed += 1
                elif o.started and o.done and o.error == "worker_failed":
                    failed_ok += 1
                else:
                    other.append(f"{o.status}:{o.error}")
            for o in await asyncio.gather(*late):
                completed += o.ok and o.completion_tokens == 5
                if not o.ok:
                    other.append(f"late {o.status}:{o.error}")

    redispatched = sum("re-dispatching" in line for line in server.lines)
    result = Result("hung-worker", {
        "freezes": freezes, "stall_timeout_s": STALL_TIMEOUT_S, "detected": len([d for d in detections if d]),
        "detect_max_s": max((d for d in detections if d), default=float("nan")), "replaced": replaced,
        "failed_with_error": failed_ok, "completed": completed, "redispatch_events": redispatched,
        "other": other or 0,
    })
    result.check(f"detected within the stall timeout (+{DETECTION_SLACK_S:g} s)",
                 all(d is not None and d <= STALL_TIMEOUT_S + DETECTION_SLACK_S for d in detections), timing=True)
    result.check("the frozen worker's requests ended cleanly; the rest completed", not other and failed_ok > 0)
    result.check("every frozen worker was replaced", replaced == freezes)
    return result


async def _detected(http, url: str, victim: dict, frozen_at: float) -> float | None:
    deadline = frozen_at + STALL_TIMEOUT_S + 30
    while time.monotonic() < deadline:
        slot = (await workers(http, url))[victim["worker_id"]]
        if slot["state"] != "ready" or slot["epoch"] != victim["epoch"]:
            return time.monotonic() - frozen_at
        await asyncio.sleep(0.05)
    return None


async def _replaced(http, url: str, victim: dict) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        slot = (await workers(http, url))[victim["worker_id"]]
        if slot["state"] == "ready" and slot["epoch"] > victim["epoch"] and slot["pid"] != victim["pid"]:
            return True
        await asyncio.sleep(0.1)
    return False
