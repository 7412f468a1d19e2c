"""The harness's HTTP clients: one request, streamed or whole, reported as an Outcome, always within a deadline."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass
class Outcome:
    status: int = 0  # HTTP status; 0 if no response came
    started: bool = False  # a token arrived
    done: bool = False  # the response ended properly: [DONE] for a stream, a whole body otherwise
    error: str | None = None  # the error code, from an error chunk or an error body
    completion_tokens: int | None = None
    retry_after: str | None = None
    elapsed: float = 0.0
    hung: bool = False  # the client's deadline passed first
    gaps: list[float] = field(default_factory=list)  # per-token gaps between token chunks

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and self.error is None


def session(**kwargs) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), read_bufsize=2**20, **kwargs)


async def request(http: aiohttp.ClientSession, url: str, path: str, body: dict, deadline_s: float,
                  on_start: asyncio.Event | None = None) -> Outcome:
    """One request, streamed if body['stream']; a passed deadline is reported as `hung`, never raised.
    `on_start` is set when a stream's first token arrives."""
    outcome = Outcome()
    started = time.monotonic()
    try:
        async with asyncio.timeout(deadline_s):
            async with http.post(url + path, json=body) as response:
                outcome.status = response.status
                outcome.retry_after = response.headers.get("Retry-After")
                if response.status != 200:
                    outcome.error = (await response.json(content_type=None))["error"]["code"]
                elif body.get("stream"):
                    await _read_stream(response, outcome, on_start)
                else:
                    payload = await response.json()
                    outcome.done = outcome.started = True
                    outcome.completion_tokens = payload["usage"]["completion_tokens"]
    except TimeoutError:
        outcome.hung = True
    except (aiohttp.ClientError, ConnectionError) as exc:
        outcome.error = f"connection: {type(exc).__name__}"
    outcome.elapsed = time.monotonic() - started
    return outcome


async def _read_stream(response: aiohttp.ClientResponse, outcome: Outcome, on_start: asyncio.Event | None) -> None:
    last = None
    async for line in response.content:
        if line == b"data: [DONE]\n":
            outcome.done = True
            return
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            outcome.error = chunk["error"]["code"]
            continue
        if chunk.get("usage"):
            outcome.completion_tokens = chunk["usage"]["completion_tokens"]
        texts = [c.get("text", c.get("delta", {}).get("content")) for c in chunk["choices"]]
        if any(texts):
            now = time.monotonic()
            if last is not None:
                outcome.gaps.append(now - last)
            last = now
            outcome.started = True
            if on_start is not None:
                on_start.set()


def completion_body(model: str, max_tokens: int, *, stream: bool, prompt: str = "chaos", **extra) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": stream, **extra}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body
