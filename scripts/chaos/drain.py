"""SIGTERM drain: SIGTERM with streams in flight, half of them running on the workers and half still waiting in
the router's queue (--max-running-per-worker holds them back).

Bars: every stream completes with [DONE] and all its tokens; /ready turns 503 and a new request gets 503; the router
exits 0, its workers are reaped and its run directory is removed.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

from .client import completion_body, request, session
from .report import Options, Result
from .server import metrics, workers

STREAMS = 32
MAX_TOKENS = 100
DEADLINE_S = 60.0


async def run(start, opt: Options) -> Result:
    streams = opt.count(STREAMS)
    workers_n = len(opt.devices.split(","))
    running_per_worker = max(1, streams // (2 * workers_n))
    server = start(*opt.serve_args("--max-running-per-worker", str(running_per_worker)))
    run_dir = re.search(r"run dir (\S+)", "".join(server.lines)).group(1)
    async with session() as http:
        pids = [w["pid"] for w in await workers(http, server.url)]
        started = [asyncio.Event() for _ in range(streams)]
        body = completion_body(server.model, MAX_TOKENS, stream=True)
        tasks = [asyncio.create_task(request(http, server.url, "/v1/completions", body, DEADLINE_S, on_start=e))
                 for e in started]
        running = running_per_worker * workers_n
        await _until(lambda: sum(e.is_set() for e in started) >= running, DEADLINE_S)
        await _until_queued(http, server.url, streams - running)
        signalled = time.monotonic()
        server.signal(signal.SIGTERM)
        ready_status = await _until_not_ready(http, server.url)
        late = await request(http, server.url, "/v1/completions", {**body, "stream": False}, DEADLINE_S)
        outcomes = await asyncio.gather(*tasks)
    code = await asyncio.to_thread(server.wait_exit, DEADLINE_S)
    drained_s = time.monotonic() - signalled
    complete = sum(o.ok and o.completion_tokens == MAX_TOKENS for o in outcomes)
    alive = [pid for pid in pids if _exists(pid)]
    result = Result("sigterm-drain", {
        "in_flight": streams, "queued_in_router": streams - running, "completed_with_done": complete, "ready_after_sigterm": ready_status,
        "new_request": f"{late.status}:{late.error}", "exit_code": code, "exit_after_s": drained_s,
        "run_dir_removed": not os.path.exists(run_dir), "workers_left": len(alive),
    })
    result.check("every in-flight stream completed with [DONE]", complete == streams)
    result.check("/ready 503 while draining", ready_status == 503)
    result.check("new requests get 503", late.status == 503 and late.error == "shutting_down")
    result.check("exit code 0", code == 0)
    result.check("workers reaped, run dir removed", not alive and not os.path.exists(run_dir))
    return result


async def _until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the streams did not start in time")
        await asyncio.sleep(0.02)


async def _until_queued(http, url: str, queued: int, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while (await metrics(http, url)).get("gpupool_router_queue_length") != queued:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{queued} requests did not queue in the router in time")
        await asyncio.sleep(0.02)


async def _until_not_ready(http, url: str, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        async with http.get(url + "/ready") as response:
            status = response.status
        if status == 503:
            break
        await asyncio.sleep(0.02)
    return status


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
