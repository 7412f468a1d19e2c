"""--api-key: /v1/* needs `Authorization: Bearer KEY`; /health, /ready and /metrics stay open."""

from __future__ import annotations

import aiohttp
import openai
import pytest


@pytest.fixture
def router(start_router):
    return start_router("--model", "sim:1", "--devices", "cpu", "--api-key", "key-one", "--api-key", "key-two")


async def status_of(session: aiohttp.ClientSession, method: str, url: str, headers: dict, json=None) -> int:
    async with session.request(method, url, headers=headers, json=json) as response:
        body = await response.json(content_type=None) if response.status != 200 or "json" in (
            response.content_type or "") else None
        if response.status == 401:
            assert body["error"]["code"] == "invalid_api_key" and body["error"]["type"] == "authentication_error"
            assert response.headers["WWW-Authenticate"] == "Bearer"
        return response.status


async def test_keys_are_required_on_v1_only(router):
    completion = {"model": router.model, "prompt": "hi", "max_tokens": 2}
    async with aiohttp.ClientSession() as s:
        models, post = router.url + "/v1/models", router.url + "/v1/completions"
        assert await status_of(s, "GET", models, {}) == 401
        assert await status_of(s, "GET", models, {"Authorization": "Bearer wrong"}) == 401
        assert await status_of(s, "GET", models, {"Authorization": "Bearer key-one-and-more"}) == 401
        assert await status_of(s, "GET", models, {"Authorization": "Basic key-one"}) == 401
        assert await status_of(s, "POST", post, {}, completion) == 401
        assert await status_of(s, "POST", post, {"Authorization": "Bearer nope"}, completion) == 401
        assert await status_of(s, "GET", router.url + "/v1/nothing", {}) == 401
        assert await status_of(s, "GET", models, {"Authorization": "Bearer key-one"}) == 200
        assert await status_of(s, "GET", models, {"Authorization": "Bearer key-two"}) == 200
        assert await status_of(s, "POST", post, {"Authorization": "Bearer key-two"}, completion) == 200
        for open_path in ("/health", "/ready", "/metrics"):
            assert await status_of(s, "GET", router.url + open_path, {}) == 200


async def test_openai_client_with_and_without_the_key(router):
    async with openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.completions.create(model=router.model, prompt="hi", max_tokens=2)
    async with openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="key-one", max_retries=0) as client:
        result = await client.completions.create(model=router.model, prompt="hi", max_tokens=2)
        assert result.usage.completion_tokens == 2
