"""Per-request streams: a slow reader's deltas merge into one pending delta per choice, and a slow client never
stalls anyone else."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from protocol.messages import GenerateRequest, SamplingParams, SequenceDelta, TokenLogprob, TopLogprob
from router.errors import ApiError
from router.stream import RequestStream
from tests.conftest import metric_values, wait_until


def make_stream(n: int = 1) -> RequestStream:
    return RequestStream(GenerateRequest("r1", SamplingParams(n=n), prompt="p"), admitted_at=0.0)


def delta(index: int, token: int, finish: str | None = None) -> SequenceDelta:
    logprob = TokenLogprob(token, f"t{token}", -0.5, [TopLogprob(token, f"t{token}", -0.5)])
    return SequenceDelta("r1", index, [token], f"t{token} ", finish, 3, token + 1, logprobs=[logprob])


def test_deltas_merge_into_one_pending_delta_per_choice():
    stream = make_stream(n=2)
    for token in range(500):
        for index in (0, 1):
            stream.push(delta(index, token, "length" if token == 499 else None), now=float(token))
    assert stream.finished and stream.started
    batch = stream.take()
    assert [d.index for d in batch] == [0, 1]
    for merged in batch:
        assert merged.token_ids == list(range(500))
        assert merged.text == "".join(f"t{t} " for t in range(500))
        assert [lp.token_id for lp in merged.logprobs] == list(range(500))
        assert merged.finish_reason == "length"
    assert stream.take() == []
    assert stream.usage == {"prompt_tokens": 3, "completion_tokens": 1000, "total_tokens": 1003}


def test_tokens_without_text_stay_pending_until_their_text_arrives():
    stream = make_stream()
    stream.push(SequenceDelta("r1", 0, [1], "", None, 3, 1), now=1.0)  # half of a multi-byte character
    assert stream.take() == [] and not stream.delivered and stream.started
    stream.push(SequenceDelta("r1", 0, [2], "é", None, 3, 2), now=2.0)
    [merged] = stream.take()
    assert merged.token_ids == [1, 2] and merged.text == "é" and stream.delivered
    assert stream.take() == []


async def test_wait_wakes_on_push_and_take_rearms():
    stream = make_stream()
    waiter = asyncio.create_task(stream.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    stream.push(delta(0, 1), now=1.0)
    await asyncio.wait_for(waiter, 1)
    assert [d.token_ids for d in stream.take()] == [[1]]
    rearmed = asyncio.create_task(stream.wait())
    await asyncio.sleep(0)
    assert not rearmed.done()
    stream.fail(ApiError(502, "gone"))
    await asyncio.wait_for(rearmed, 1)
    assert stream.finished and stream.error.status == 502


def test_a_failed_or_finished_stream_ignores_late_deltas():
    stream = make_stream()
    stream.push(delta(0, 1), now=1.0)
    stream.fail(ApiError(502, "gone"))
    stream.push(delta(0, 2), now=2.0)
    assert stream.take() == []
    done = make_stream()
    done.push(delta(0, 1, "stop"), now=1.0)
    done.push(delta(0, 2), now=2.0)
    done.push(delta(5, 2), now=2.0)  # no such choice
    assert [d.token_ids for d in done.take()] == [[1]]


async def test_a_client_that_stops_reading_stalls_nobody(start_router):
    router = start_router("--model", "sim:0", "--devices", "cpu")
    n, max_tokens = 8, 2000
    slow_body = {"model": router.model, "prompt": "slow", "max_tokens": max_tokens, "n": n, "logprobs": 5,
                 "stream": True, "ignore_eos": True}
    async with aiohttp.ClientSession(read_bufsize=2**16) as slow_session, aiohttp.ClientSession() as session:
        slow = await slow_session.post(router.url + "/v1/completions", json=slow_body)
        assert slow.status == 200
        # The slow client reads nothing more until the worker has finished its request and others were served.
        async with session.post(router.url + "/v1/completions",
                                json={"model": router.model, "prompt": "fast", "max_tokens": 50}) as fast:
            assert fast.status == 200
            assert (await fast.json())["usage"]["completion_tokens"] == 50

        async def worker_done() -> bool:
            async with session.get(router.url + "/metrics") as response:
                text = await response.text()
            return metric_values(text, "gpupool_generation_tokens_total")[""] >= n * max_tokens + 50 and \
                metric_values(text, "gpupool_num_requests_running") == {'{worker="0"}': 0.0}

        await wait_until(worker_done, 60, "the worker to finish the slow client's request")
        tokens, chunks = [0] * n, 0
        for line in (await slow.read()).split(b"\n\n"):  # merged chunks are too long for readline()
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                chunks += 1
                for choice in chunk["choices"]:
                    tokens[choice["index"]] += len(choice["logprobs"]["tokens"])
        slow.release()
    assert tokens == [max_tokens] * n, "every token arrived"
    assert chunks < n * max_tokens / 2, "deltas were merged while the client did not read"
