"""A worker killed (or frozen) mid-stream: its streams end with an error at once, queued requests still complete,
and the worker is restarted and serves again."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import aiohttp

from protocol.messages import GenerateRequest, SamplingParams, SequenceDelta
from router.admission import Admission
from router.dispatch import Dispatcher
from router.metrics import Metrics
from router.stream import RequestStream
from router.workers import WorkerSlot, WorkerState
from tests.conftest import metric_values, wait_until

PER_WORKER = 4


def test_a_dead_workers_requests_start_over_unless_their_handler_took_output():
    slot = WorkerSlot(0, "cpu", epoch=0, state=WorkerState.READY)
    dispatcher = Dispatcher([slot], Admission(max_queue=8), Metrics(), max_running_per_worker=4)
    took, pending, held, quiet = (RequestStream(GenerateRequest(rid, SamplingParams(max_tokens=8), prompt="p"),
                                                admitted_at=0.0) for rid in ("took", "pending", "held", "quiet"))
    for stream in (took, pending, held, quiet):
        dispatcher.admit(stream)
    for stream in (took, pending):
        stream.push(SequenceDelta(stream.request_id, 0, [7], "x", None, 1, 1), now=1.0)
    held.push(SequenceDelta("held", 0, [7], "", None, 1, 1), now=1.0)  # a token whose text is held back
    assert [d.token_ids for d in took.take()] == [[7]]
    assert held.take() == [], "nothing a client could see"

    slot.state = WorkerState.DEAD
    dispatcher.worker_lost(slot, "killed")
    assert took.error is not None and took.error.code == "worker_failed"
    assert pending.error is None and not pending.started and pending.take() == [], "its token was dropped"
    assert pending.usage["completion_tokens"] == 0 and pending.worker_id is None
    assert held.error is None and not held.started
    assert dispatcher.waiting == 3

    slot.epoch, slot.state = 1, WorkerState.READY
    dispatcher.pump()
    assert list(slot.outstanding) == ["pending", "held", "quiet"] and dispatcher.waiting == 0


async def stream_outcome(session: aiohttp.ClientSession, url: str, body: dict, started: asyncio.Queue) -> str:
    """'done' if the stream ended with [DONE] after its tokens, else the error code of its error chunk."""
    async with session.post(url + "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status == 200
        await started.put(None)
        error = None
        async for line in response.content:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                error = chunk["error"]["code"] if "error" in chunk else error
            elif line == b"data: [DONE]\n":
                return error or "done"
    return "cut off without [DONE]"


async def ready_workers(session: aiohttp.ClientSession, url: str) -> list[dict]:
    async with session.get(url + "/ready") as response:
        return (await response.json())["workers"]


async def run_fault(start_router, fault: int, *extra: str, room: int = 0) -> str:
    """`room`: free slots per worker beyond the streams, so requests sent after the fault reach the faulty one."""
    router = start_router("--model", "sim:20", "--devices", "cpu,cpu", "--max-running-per-worker",
                          str(PER_WORKER + room), *extra)
    body = {"model": router.model, "prompt": "a story", "max_tokens": 150}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started: asyncio.Queue = asyncio.Queue()
        streams = [asyncio.create_task(stream_outcome(session, router.url, body, started))
                   for _ in range(2 * PER_WORKER)]
        for _ in streams:
            await asyncio.wait_for(started.get(), 30)
        workers = await ready_workers(session, router.url)
        victim = workers[0]
        assert [w["outstanding"] for w in workers] == [PER_WORKER, PER_WORKER]
        if not room:  # these wait in the router's queue
            queued = [asyncio.create_task(session.post(router.url + "/v1/completions",
                                                       json={**body, "max_tokens": 5})) for _ in range(3)]
        os.kill(victim["pid"], fault)
        if room:  # one of these is sent to the frozen worker and never starts there
            queued = [asyncio.create_task(session.post(router.url + "/v1/completions",
                                                       json={**body, "max_tokens": 5})) for _ in range(3)]

        outcomes = await asyncio.wait_for(asyncio.gather(*streams), 30)
        assert sorted(outcomes) == ["done"] * PER_WORKER + ["worker_failed"] * PER_WORKER, outcomes
        for response in await asyncio.wait_for(asyncio.gather(*queued), 30):
            assert response.status == 200
            assert (await response.json())["usage"]["completion_tokens"] == 5
            response.release()

        async def restarted() -> bool:
            w = (await ready_workers(session, router.url))[0]
            return w["state"] == "ready" and w["epoch"] == 1 and w["pid"] != victim["pid"]

        await wait_until(restarted, 30, "the worker to come back")
        for response in await asyncio.gather(*(session.post(router.url + "/v1/completions",
                                                            json={**body, "max_tokens": 5})
                                               for _ in range(2 * PER_WORKER))):
            assert response.status == 200
            response.release()

        async def new_worker_served() -> bool:  # its stats arrive every --stats-interval
            async with session.get(router.url + "/metrics") as response:
                return metric_values(await response.text(), "gpupool_worker_steps_done")['{worker="0"}'] > 0

        await wait_until(new_worker_served, 10, "the new worker's steps in /metrics")
        async with session.get(router.url + "/metrics") as response:
            metrics = await response.text()
        assert metric_values(metrics, "gpupool_worker_restarts_total") == {"": 1.0}
        assert metric_values(metrics, "gpupool_worker_up") == {'{worker="0"}': 1.0, '{worker="1"}': 1.0}
    return "".join(router.lines)


async def test_kill_9_a_worker_mid_stream(start_router):
    await run_fault(start_router, signal.SIGKILL)


async def test_a_frozen_worker_is_killed_by_the_watchdog_and_its_unstarted_request_rerouted(start_router):
    log = await run_fault(start_router, signal.SIGSTOP, "--heartbeat-timeout", "1.5", room=1)
    assert "killing worker 0" in log and "no heartbeat for 1.5 s" in log
    assert "re-dispatching 1 unstarted requests of worker 0" in log
