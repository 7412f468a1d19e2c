"""First-token and total deadlines, server-wide and per request: the request is aborted on its worker and the
response ends with a clear timeout error (504 before the first byte, an error chunk after)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.conftest import metric_values, wait_until


async def worker_idle(session: aiohttp.ClientSession, url: str) -> bool:
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    return (all(v == 0 for v in metric_values(text, "gpupool_num_requests_running").values())
            and all(v == 0 for v in metric_values(text, "gpupool_kv_cache_blocks_used").values())
            and metric_values(text, "gpupool_router_queue_length") == {"": 0.0})


async def test_first_token_timeout_while_queued(start_router):
    router = start_router("--model", "sim:20", "--devices", "cpu", "--max-running-per-worker", "1",
                          "--first-token-timeout", "0.5")
    body = {"model": router.model, "prompt": "x", "max_tokens": 100}
    async with aiohttp.ClientSession() as session:
        async with session.post(router.url + "/v1/completions", json={**body, "stream": True}) as busy:
            assert busy.status == 200
            await busy.content.readline()  # the only slot is taken
            for stream in (False, True):
                async with session.post(router.url + "/v1/completions",
                                        json={**body, "max_tokens": 2, "stream": stream}) as late:
                    assert late.status == 504
                    error = (await late.json())["error"]
                    assert error["code"] == "first_token_timeout" and "0.5 s" in error["message"]
            busy.close()
        await wait_until(lambda: worker_idle(session, router.url), 10, "the worker to be idle")


async def test_per_request_timeout_mid_stream_ends_with_an_error_chunk(start_router):
    router = start_router("--model", "sim:20", "--devices", "cpu")
    body = {"model": router.model, "prompt": "x", "max_tokens": 1000, "stream": True, "timeout": 0.6}
    async with aiohttp.ClientSession() as session:
        async with session.post(router.url + "/v1/completions", json=body) as response:
            assert response.status == 200
            lines = [line async for line in response.content if line.strip()]
        assert lines[-1] == b"data: [DONE]\n"
        error = json.loads(lines[-2][6:])["error"]
        assert error["code"] == "request_timeout" and error["type"] == "timeout_error"
        assert 1 < len(lines) - 2 < 1000
        async with session.post(router.url + "/v1/completions", json={**body, "stream": False}) as response:
            assert response.status == 504
            assert (await response.json())["error"]["code"] == "request_timeout"
        await wait_until(lambda: worker_idle(session, router.url), 10, "the worker to be idle")
        async with session.get(router.url + "/metrics") as response:
            counted = metric_values(await response.text(), "gpupool_requests_total")
        assert counted == {'{outcome="timeout",status="504"}': 2.0}


async def test_per_request_first_token_timeout_cannot_exceed_the_servers(start_router):
    router = start_router("--model", "sim:20", "--devices", "cpu", "--max-running-per-worker", "1",
                          "--first-token-timeout", "0.4")
    body = {"model": router.model, "prompt": "x", "max_tokens": 100}
    async with aiohttp.ClientSession() as session:
        busy = asyncio.create_task(session.post(router.url + "/v1/completions", json=body))

        async def occupied() -> bool:
            async with session.get(router.url + "/ready") as response:
                return (await response.json())["workers"][0]["outstanding"] == 1

        await wait_until(occupied, 10, "the slot to be taken")
        async with session.post(router.url + "/v1/completions",
                                json={**body, "first_token_timeout": 1000}) as late:
            assert late.status == 504
            assert "0.4 s" in (await late.json())["error"]["message"]
        (await busy).release()
