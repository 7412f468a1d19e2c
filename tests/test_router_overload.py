"""Backpressure: past --max-queue, requests get 503 with Retry-After at once; the admitted ones complete."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from router.admission import Admission
from tests.conftest import metric_values, wait_until

BURST = 40
RUNNING, QUEUE = 2, 3


async def test_burst_gets_only_200_or_503_with_retry_after(start_router):
    router = start_router("--model", "sim:20", "--devices", "cpu", "--max-running-per-worker", str(RUNNING),
                          "--max-queue", str(QUEUE))
    body = {"model": router.model, "prompt": "burst", "max_tokens": 10}

    async def one(session: aiohttp.ClientSession, stream: bool) -> tuple[int, float, str | None, dict]:
        started = time.monotonic()
        async with session.post(router.url + "/v1/completions", json={**body, "stream": stream}) as response:
            if response.status == 200 and stream:
                text = await response.text()
                assert text.endswith("data: [DONE]\n\n")
                payload = {}
            else:
                payload = await response.json()
            return response.status, time.monotonic() - started, response.headers.get("Retry-After"), payload

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(one(session, stream=i % 2 == 1) for i in range(BURST)))
        async with session.get(router.url + "/metrics") as response:
            metrics = await response.text()

    statuses = [status for status, *_ in results]
    assert set(statuses) <= {200, 503}, statuses
    ok, rejected = statuses.count(200), statuses.count(503)
    assert ok >= RUNNING + QUEUE and rejected >= 1, statuses
    last_success = max(elapsed for status, elapsed, *_ in results if status == 200)
    for status, elapsed, retry_after, payload in results:
        if status == 503:
            assert retry_after is not None and int(retry_after) >= 1
            assert payload["error"]["code"] == "overloaded"
            assert elapsed < last_success, "a rejection is answered at once, not after waiting in the queue"
        elif payload:
            assert payload["usage"]["completion_tokens"] == 10
    counted = metric_values(metrics, "gpupool_requests_total")
    assert counted == {'{outcome="success",status="200"}': ok, '{outcome="rejected",status="503"}': rejected}


def test_only_a_full_queue_refuses_early():
    assert Admission(max_queue=3).refuse_early(2) is None
    assert Admission(max_queue=3).refuse_early(3).code == "overloaded"
    assert Admission(max_queue=0).refuse_early(0) is None, "an empty queue: a worker may have room"
    assert Admission(max_queue=0).refuse_early(1).code == "overloaded"
    draining = Admission(max_queue=3)
    draining.start_draining()
    assert draining.refuse_early(0).code == "shutting_down"


async def test_a_full_queue_refuses_without_reading_the_body(start_router):
    router = start_router("--model", "sim:20", "--devices", "cpu", "--max-running-per-worker", str(RUNNING),
                          "--max-queue", str(QUEUE))
    body = {"model": router.model, "prompt": "fill", "max_tokens": 200, "ignore_eos": True}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        fill = [asyncio.create_task(session.post(router.url + "/v1/completions", json=body))
                for _ in range(RUNNING + QUEUE)]

        async def queue_full() -> bool:
            async with session.get(router.url + "/metrics") as response:
                return metric_values(await response.text(), "gpupool_router_queue_length").get("") == QUEUE

        await wait_until(queue_full, 10, "the queue to fill")
        async with session.post(router.url + "/v1/completions", data=b"{not json") as response:
            assert response.status == 503 and (await response.json())["error"]["code"] == "overloaded"
        for task in fill:
            task.cancel()
        await asyncio.gather(*fill, return_exceptions=True)
