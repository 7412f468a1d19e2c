"""Malformed requests against a real router with a real (sim) worker: each gets its 4xx in OpenAI's shape, never a
500, and the server and its worker are unharmed afterwards."""

from __future__ import annotations

import io
import json

import aiohttp
import pytest

from tests.conftest import RouterProcess, metric_values

MODEL = "sim:2"
CONTEXT = 4096  # the sim worker's context length
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def completion(**fields):
    return json.dumps({"model": MODEL, "prompt": "hello", "max_tokens": 4, **fields})


def chat(**fields):
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **fields})


def without(body: str, field: str) -> str:
    fields = json.loads(body)
    del fields[field]
    return json.dumps(fields)


CASES = [
    # (name, method, path, body, expected status, expected error param or None)
    ("invalid JSON", "POST", COMPLETIONS, '{"model": ', 400, None),
    ("empty body", "POST", COMPLETIONS, "", 400, None),
    ("body is an array", "POST", COMPLETIONS, "[1, 2]", 400, None),
    ("body is a string", "POST", CHAT, '"hello"', 400, None),
    ("NaN literal", "POST", COMPLETIONS, '{"model": "sim:2", "prompt": "x", "temperature": NaN}', 400, None),
    ("missing model", "POST", COMPLETIONS, without(completion(), "model"), 400, "model"),
    ("unknown model", "POST", COMPLETIONS, completion(model="gpt-9"), 404, "model"),
    ("model wrong type", "POST", CHAT, chat(model=7), 400, "model"),
    ("missing prompt", "POST", COMPLETIONS, without(completion(), "prompt"), 400, "prompt"),
    ("prompt is a number", "POST", COMPLETIONS, completion(prompt=42), 400, "prompt"),
    ("prompt is empty", "POST", COMPLETIONS, completion(prompt=""), 400, "prompt"),
    ("negative token id", "POST", COMPLETIONS, completion(prompt=[1, -5]), 400, "prompt"),
    ("token id outside the vocabulary", "POST", COMPLETIONS, completion(prompt=[1, 10**9]), 400, None),
    ("batched prompts", "POST", COMPLETIONS, completion(prompt=["a", "b"]), 400, "prompt"),
    ("max_tokens is a string", "POST", COMPLETIONS, completion(max_tokens="4"), 400, "max_tokens"),
    ("max_tokens is a boolean", "POST", COMPLETIONS, completion(max_tokens=True), 400, "max_tokens"),
    ("max_tokens is 0", "POST", COMPLETIONS, completion(max_tokens=0), 400, "max_tokens"),
    ("max_tokens beyond the context", "POST", COMPLETIONS, completion(max_tokens=CONTEXT + 1), 400, "max_tokens"),
    ("negative temperature", "POST", COMPLETIONS, completion(temperature=-1), 400, "temperature"),
    ("temperature is a string", "POST", CHAT, chat(temperature="hot"), 400, "temperature"),
    ("top_p is 0", "POST", COMPLETIONS, completion(top_p=0), 400, "top_p"),
    ("presence_penalty out of range", "POST", CHAT, chat(presence_penalty=5), 400, "presence_penalty"),
    ("n is 0", "POST", COMPLETIONS, completion(n=0), 400, "n"),
    ("n is huge", "POST", CHAT, chat(n=1000), 400, "n"),
    ("seed is a float", "POST", COMPLETIONS, completion(seed=1.5), 400, "seed"),
    ("logprobs too many", "POST", COMPLETIONS, completion(logprobs=100), 400, "logprobs"),
    ("top_logprobs without logprobs", "POST", CHAT, chat(top_logprobs=2), 400, "top_logprobs"),
    ("stop is a number", "POST", COMPLETIONS, completion(stop=5), 400, "stop"),
    ("too many stop strings", "POST", CHAT, chat(stop=[f"s{i}" for i in range(100)]), 400, "stop"),
    ("empty stop string", "POST", CHAT, chat(stop=[""]), 400, "stop"),
    ("unknown field", "POST", COMPLETIONS, completion(frobnicate=True), 400, "frobnicate"),
    ("stream is a string", "POST", COMPLETIONS, completion(stream="yes"), 400, "stream"),
    ("stream_options without stream", "POST", CHAT, chat(stream_options={"include_usage": True}), 400,
     "stream_options"),
    ("unknown stream option", "POST", CHAT, chat(stream=True, stream_options={"x": 1}), 400, "stream_options.x"),
    ("echo is unsupported", "POST", COMPLETIONS, completion(echo=True), 400, "echo"),
    ("logit_bias is unsupported", "POST", COMPLETIONS, completion(logit_bias={"5": 10}), 400, "logit_bias"),
    ("negative timeout", "POST", COMPLETIONS, completion(timeout=-1), 400, "timeout"),
    ("missing messages", "POST", CHAT, without(chat(), "messages"), 400, "messages"),
    ("empty messages", "POST", CHAT, chat(messages=[]), 400, "messages"),
    ("message is not an object", "POST", CHAT, chat(messages=["hi"]), 400, "messages[0]"),
    ("unknown role", "POST", CHAT, chat(messages=[{"role": "wizard", "content": "hi"}]), 400, "messages[0].role"),
    ("content is a number", "POST", CHAT, chat(messages=[{"role": "user", "content": 3}]), 400, "messages[0].content"),
    ("unknown message field", "POST", CHAT, chat(messages=[{"role": "user", "content": "a", "x": 1}]), 400,
     "messages[0].x"),
    ("image content part", "POST", CHAT,
     chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), 400, None),
    ("tools are unsupported", "POST", CHAT, chat(tools=[{"type": "function"}]), 400, "tools"),
    ("prompt longer than the context", "POST", COMPLETIONS, completion(prompt=[7] * (CONTEXT + 10)), 400, None),
    ("streamed prompt longer than the context", "POST", COMPLETIONS,
     completion(prompt=[7] * (CONTEXT + 10), stream=True), 400, None),
    ("prompt plus max_tokens beyond the context", "POST", CHAT, chat(max_tokens=CONTEXT), 400, None),
    ("oversized body", "POST", COMPLETIONS, completion(prompt="x" * (5 * 1024 * 1024)), 413, None),
    ("unknown route", "POST", "/v1/nothing", completion(), 404, None),
    ("wrong method", "GET", COMPLETIONS, None, 405, None),
]


def payload_of(body: str | None) -> io.BytesIO | None:
    return None if body is None else io.BytesIO(body.encode())


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    process = RouterProcess(["--model", MODEL, "--devices", "cpu"], tmp_path_factory.mktemp("router") / "log")
    yield process.wait_serving()
    process.stop()


def test_the_table_is_big_enough():
    assert len(CASES) >= 25
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("name,method,path,body,status,param", CASES, ids=[c[0] for c in CASES])
async def test_malformed_request(router, name, method, path, body, status, param):
    async with aiohttp.ClientSession() as session:
        headers = {"Content-Type": "application/json"}
        async with session.request(method, router.url + path, data=payload_of(body), headers=headers) as response:
            payload = await response.json(content_type=None)
            assert response.status == status, payload
    error = payload["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert "param" in error and "code" in error
    if param is not None:
        assert error["param"] == param


async def test_server_is_healthy_after_the_table(router):
    async with aiohttp.ClientSession() as session:
        for case in CASES:  # again, all in a row, so this test stands on its own
            async with session.request(case[1], router.url + case[2], data=payload_of(case[3])) as response:
                assert response.status == case[4]
        async with session.get(router.url + "/ready") as response:
            ready = await response.json()
            assert response.status == 200
        async with session.post(router.url + COMPLETIONS, data=completion()) as response:
            assert response.status == 200
            assert (await response.json())["usage"]["completion_tokens"] == 4
        async with session.get(router.url + "/metrics") as response:
            metrics = await response.text()
    assert [w["epoch"] for w in ready["workers"]] == [0], "a worker was restarted"
    assert metric_values(metrics, "gpupool_worker_restarts_total") == {"": 0.0}
    assert not any('status="500"' in key for key in metric_values(metrics, "gpupool_requests_total"))
