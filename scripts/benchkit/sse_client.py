"""One streamed request: send it, read its SSE events without parsing JSON per token, time each event."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp

_TEXT_KEYS = (b'"text":', b'"content":')


@dataclass
class RequestResult:
    start: float
    end: float = 0.0
    token_times: list[float] = field(default_factory=list)  # arrival of each event that carried text
    output_tokens: int | None = None  # from usage
    prompt_tokens: int | None = None
    requested_tokens: int = 0
    error: str | None = None

    @property
    def tokens(self) -> int:
        return self.output_tokens if self.output_tokens is not None else len(self.token_times)


def has_text(payload: bytes) -> bool:
    """Whether an SSE chunk carries generated text (completions `text` or chat `delta.content`), without JSON."""
    for key in _TEXT_KEYS:
        i = payload.find(key)
        if i >= 0:
            i += len(key)
            if payload[i:i + 1] == b" ":
                i += 1
            return payload[i:i + 1] == b'"' and payload[i + 1:i + 2] != b'"'
    return False


def read_events(result: RequestResult, lines: list[bytes], now: float) -> bool:
    """Account one read's complete lines; False once the stream reported an error."""
    for line in lines:
        if not line.startswith(b"data:"):
            continue  # blank separators, comments, `event:` lines
        payload = line[5:].strip()
        if has_text(payload):
            result.token_times.append(now)
        elif payload == b"[DONE]":
            continue
        elif b'"error"' in payload:
            result.error = "sse_error"
            return False
        if b'"usage":{' in payload or b'"usage": {' in payload:
            usage = json.loads(payload).get("usage") or {}
            result.output_tokens = usage.get("completion_tokens")
            result.prompt_tokens = usage.get("prompt_tokens")
    return True


async def stream_request(session: aiohttp.ClientSession, url: str, body: bytes, requested: int) -> RequestResult:
    result = RequestResult(start=time.perf_counter(), requested_tokens=requested)
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            if resp.status != 200:
                await resp.read()
                result.error = f"http_{resp.status}"
            else:
                tail = b""
                async for data in resp.content.iter_any():
                    lines = (tail + data).split(b"\n")
                    tail = lines.pop()
                    if not read_events(result, lines, time.perf_counter()):
                        break
                else:
                    read_events(result, [tail], time.perf_counter())
                    if not result.token_times and result.error is None:
                        result.error = "empty_stream"
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
        result.error = type(exc).__name__
    result.end = time.perf_counter()
    return result
