"""Clients that go away: their requests are aborted on the worker at once and their KV blocks are freed."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import metric_values, wait_until

CLIENTS = 100


async def scrape(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url + "/metrics") as response:
        return await response.text()


async def pool_is_idle(session: aiohttp.ClientSession, url: str) -> bool:
    text = await scrape(session, url)
    families = ("gpupool_num_requests_running", "gpupool_num_requests_waiting", "gpupool_kv_cache_blocks_used",
                "gpupool_worker_outstanding_requests")
    return all(v == 0 for f in families for v in metric_values(text, f).values())


async def total(session: aiohttp.ClientSession, url: str, family: str) -> float:
    return sum(metric_values(await scrape(session, url), family).values())


async def test_100_clients_disconnecting_mid_stream_free_everything(start_router):
    router = start_router("--model", "sim:20", "--devices", "cpu,cpu")
    body = {"model": router.model, "prompt": "tell me a long story", "max_tokens": 3000, "stream": True}
    all_started, disconnect = asyncio.Event(), asyncio.Event()
    started = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal started
        response = await session.post(router.url + "/v1/completions", json=body)
        assert response.status == 200
        line = await response.content.readline()
        assert line.startswith(b"data: {")
        started += 1
        if started == CLIENTS:
            all_started.set()
        await disconnect.wait()
        response.close()  # drop the connection mid-stream

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as clients, \
            aiohttp.ClientSession() as observer:
        streams = asyncio.gather(*(client(clients) for _ in range(CLIENTS)))
        async with asyncio.timeout(60):
            await all_started.wait()
        assert await total(observer, router.url, "gpupool_worker_outstanding_requests") == CLIENTS

        async def all_running_on_workers() -> bool:  # worker stats arrive every --stats-interval
            text = await scrape(observer, router.url)
            return (sum(metric_values(text, "gpupool_num_requests_running").values()) == CLIENTS
                    and sum(metric_values(text, "gpupool_kv_cache_blocks_used").values()) > 0)

        await wait_until(all_running_on_workers, 10, "the workers to report 100 running requests")
        disconnect.set()
        await streams
        await wait_until(lambda: pool_is_idle(observer, router.url), 15, "running, waiting and KV back to 0")
        text = await scrape(observer, router.url)
        assert metric_values(text, "gpupool_requests_total") == {'{outcome="cancelled",status="499"}': CLIENTS}
        async with observer.post(router.url + "/v1/completions", json={**body, "max_tokens": 3, "stream": False}) as r:
            assert r.status == 200


async def test_non_streaming_clients_that_disconnect_are_aborted(start_router):
    router = start_router("--model", "sim:20", "--devices", "cpu")
    body = {"model": router.model, "prompt": "a long one", "max_tokens": 3000}
    async with aiohttp.ClientSession() as clients, aiohttp.ClientSession() as observer:
        waiting = [asyncio.create_task(clients.post(router.url + "/v1/completions", json=body)) for _ in range(10)]

        async def all_running() -> bool:
            text = await scrape(observer, router.url)
            return metric_values(text, "gpupool_num_requests_running") == {'{worker="0"}': 10}

        await wait_until(all_running, 15, "10 requests running on the worker")
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await clients.close()  # the connections go away with the session
        await wait_until(lambda: pool_is_idle(observer, router.url), 15, "running and KV back to 0")
