"""SIGTERM: readiness and admission close, in-flight streams finish (or end with an error past
--shutdown-timeout), workers are stopped and reaped, the run dir is removed, and the exit code is 0."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal

import aiohttp

from tests.conftest import wait_until

STREAMS = 16


async def read_stream(response: aiohttp.ClientResponse) -> tuple[int, str | None, bool]:
    """(tokens, error code or None, ended with [DONE])"""
    tokens, error = 0, None
    async for line in response.content:
        if line.startswith(b"data: {"):
            chunk = json.loads(line[6:])
            if "error" in chunk:
                error = chunk["error"]["code"]
            else:
                tokens += 1
        elif line == b"data: [DONE]\n":
            return tokens, error, True
    return tokens, error, False


async def sigterm_with_streams(start_router, max_tokens: int, *extra: str, twice: bool = False):
    router = start_router("--model", "sim:20", "--devices", "cpu,cpu", *extra)
    run_dir = re.search(r"run dir (\S+)", "".join(router.lines)).group(1)
    body = {"model": router.model, "prompt": "shutdown", "max_tokens": max_tokens, "stream": True}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        responses = await asyncio.gather(*(session.post(router.url + "/v1/completions", json=body)
                                           for _ in range(STREAMS)))
        assert [r.status for r in responses] == [200] * STREAMS
        async with session.get(router.url + "/ready") as ready:
            pids = [w["pid"] for w in (await ready.json())["workers"]]
        readers = [asyncio.create_task(read_stream(r)) for r in responses]
        router.signal(signal.SIGTERM)

        async def not_ready() -> bool:
            async with session.get(router.url + "/ready") as response:
                return response.status == 503

        await wait_until(not_ready, 10, "/ready to turn 503")
        async with session.post(router.url + "/v1/completions", json={**body, "stream": False}) as late:
            assert late.status == 503
            assert (await late.json())["error"]["code"] == "shutting_down"
        if twice:
            router.signal(signal.SIGINT)
        results = await asyncio.wait_for(asyncio.gather(*readers), 60)
        for response in responses:
            response.release()
    code = await asyncio.to_thread(router.wait_exit, 60)
    assert code == 0, router.log()
    assert not os.path.exists(run_dir)
    for pid in pids:
        assert not process_exists(pid), f"worker {pid} outlived the router"
    return results, router


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_sigterm_lets_16_streams_finish(start_router):
    results, router = await sigterm_with_streams(start_router, 60)
    assert results == [(60, None, True)] * STREAMS
    assert "sent no Goodbye" not in "".join(router.lines)


async def test_streams_past_the_shutdown_timeout_end_with_an_error_event(start_router):
    results, _ = await sigterm_with_streams(start_router, 2000, "--shutdown-timeout", "0.5")
    for tokens, error, done in results:
        assert 0 < tokens < 2000 and error == "shutting_down" and done


async def test_a_second_signal_cuts_the_drain_short(start_router):
    results, _ = await sigterm_with_streams(start_router, 2000, "--shutdown-timeout", "600", twice=True)
    for tokens, error, done in results:
        assert 0 < tokens < 2000 and error == "shutting_down" and done
