"""End to end: `gpupool serve` with the built-in model on 2 CPU workers, driven by the official openai client."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest

from tests.conftest import RouterProcess, metric_values, wait_until

PROMPT = "Once upon a time, in a small village,"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    # float32: in bfloat16, greedy decoding may differ between a prefix-cached and an uncached prompt
    args = ["--model", "builtin", "--devices", "cpu,cpu", "--dtype", "float32"]
    process = RouterProcess(args, tmp_path_factory.mktemp("e2e") / "log")
    yield process.wait_serving(timeout=180)
    process.stop()


@pytest.fixture
async def client(router):
    client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    yield client
    await client.close()


async def test_models_lists_the_served_model(client, router):
    models = [m.id async for m in client.models.list()]
    assert models == [router.model]


async def test_completion_streamed_equals_whole_for_greedy(client, router):
    whole = await client.completions.create(model=router.model, prompt=PROMPT, max_tokens=24, temperature=0)
    assert whole.choices[0].finish_reason in ("length", "stop")
    assert whole.usage.completion_tokens == (24 if whole.choices[0].finish_reason == "length" else
                                             whole.usage.completion_tokens)
    assert whole.usage.prompt_tokens > 0
    assert whole.choices[0].text

    chunks = [c async for c in await client.completions.create(
        model=router.model, prompt=PROMPT, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True})]
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and set(finishes[:-1]) == {None}


async def test_chat_streamed_equals_whole_for_greedy(client, router):
    whole = await client.chat.completions.create(model=router.model, messages=MESSAGES, max_tokens=24,
                                                 temperature=0)
    message = whole.choices[0].message
    assert message.role == "assistant" and message.content
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    stream = await client.chat.completions.create(model=router.model, messages=MESSAGES, max_tokens=24,
                                                  temperature=0, stream=True)
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


async def test_sampling_parameters_pass_through(client, router):
    first = await client.completions.create(model=router.model, prompt=PROMPT, max_tokens=12, temperature=1.0,
                                            seed=1234, n=2, logprobs=2,
                                            extra_body={"top_k": 50, "repetition_penalty": 1.1})
    again = await client.completions.create(model=router.model, prompt=PROMPT, max_tokens=12, temperature=1.0,
                                            seed=1234, n=2, logprobs=2,
                                            extra_body={"top_k": 50, "repetition_penalty": 1.1})
    assert [c.text for c in first.choices] == [c.text for c in again.choices], "a seed makes sampling repeatable"
    assert sorted(c.index for c in first.choices) == [0, 1]
    for choice in first.choices:
        assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs) == 12
        assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs)
        assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    stopped = await client.completions.create(model=router.model, prompt=PROMPT, max_tokens=40, temperature=0,
                                              stop=[first.choices[0].text[:1] or "e"])
    assert stopped.choices[0].finish_reason in ("stop", "length")
    chat = await client.chat.completions.create(model=router.model, messages=MESSAGES, max_tokens=5,
                                                temperature=0, logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    assert len(content) == 5 and all(len(entry.top_logprobs) == 3 for entry in content)


async def test_both_workers_serve_concurrent_requests(client, router):
    await asyncio.gather(*(client.completions.create(model=router.model, prompt=f"{PROMPT} {i}", max_tokens=16,
                                                     temperature=0) for i in range(6)))
    steps: dict[str, float] = {}

    async def both_stepped() -> bool:
        async with aiohttp.ClientSession() as session:
            async with session.get(router.url + "/metrics") as response:
                steps.update(metric_values(await response.text(), "gpupool_worker_steps_done"))
        return set(steps) == {'{worker="0"}', '{worker="1"}'} and all(v > 0 for v in steps.values())

    # Step counts arrive with the workers' stats frames, a stats interval after the requests end.
    await wait_until(both_stepped, 10, f"both workers to report steps (saw {steps})")


async def test_errors_come_back_as_openai_errors(client, router):
    with pytest.raises(openai.NotFoundError):
        await client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=2)
    with pytest.raises(openai.BadRequestError) as raised:
        await client.completions.create(model=router.model, prompt=PROMPT, max_tokens=2, temperature=-3)
    assert raised.value.body["param"] == "temperature"
