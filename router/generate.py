"""One admitted request, from admission to the last byte of its response, whole or streamed.

A stream's 200 and its headers wait for the first delta, so that errors found by the worker before any token (a
prompt too long for the context) and a first-token timeout still get their own HTTP status. After that, a failure is
sent as an error chunk followed by `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from aiohttp import web

from protocol.messages import GenerateRequest
from router.dispatch import Dispatcher
from router.errors import ApiError, timed_out
from router.metrics import Metrics
from router.openai_schema import ParsedRequest
from router.responses import DONE, SSE_HEADERS, ResponseShape, sse
from router.stream import PendingDelta, RequestStream

CLIENT_CLOSED = 499  # nginx's status for a client that went away; used only in metrics


def outcome_of(status: int) -> str:
    if status < 300:
        return "success"
    if status == CLIENT_CLOSED:
        return "cancelled"
    if status == 504:
        return "timeout"
    if status == 503:
        return "rejected"
    return "invalid" if status < 500 else "error"


@dataclass(frozen=True)
class Deadlines:
    """Monotonic deadlines: the first token's, and the whole request's."""

    first_token: float
    first_token_s: float
    total: float
    total_s: float

    def remaining(self, started: bool) -> float:
        deadline = self.total if started else min(self.first_token, self.total)
        return deadline - time.monotonic()

    def expired(self, started: bool) -> ApiError:
        if started or self.total <= self.first_token:
            return timed_out("request", self.total_s)
        return timed_out("first token", self.first_token_s)


async def generate(
    request: web.Request,
    parsed: ParsedRequest,
    dispatcher: Dispatcher,
    metrics: Metrics,
    first_token_timeout: float,
    request_timeout: float,
) -> web.StreamResponse:
    """Admit, run and answer one request. Raises ApiError only before the request was admitted."""
    first_s = min(parsed.first_token_timeout or first_token_timeout, first_token_timeout)
    total_s = min(parsed.request_timeout or request_timeout, request_timeout)
    request_id = ("chatcmpl-" if parsed.chat else "cmpl-") + uuid.uuid4().hex
    work = GenerateRequest(
        request_id=request_id, sampling=parsed.sampling, prompt=parsed.prompt,
        prompt_token_ids=parsed.prompt_token_ids, messages=parsed.messages,
        add_special_tokens=parsed.add_special_tokens, deadline=time.time() + total_s,
    )
    admitted_at = time.monotonic()
    stream = RequestStream(work, admitted_at=admitted_at)
    dispatcher.admit(stream)
    deadlines = Deadlines(admitted_at + first_s, first_s, admitted_at + total_s, total_s)
    shape = ResponseShape(parsed.chat, request_id, int(time.time()), parsed.model, parsed.sampling.logprobs is not None)
    status = CLIENT_CLOSED
    try:
        if parsed.stream:
            response, status = await _streamed(request, stream, deadlines, shape, parsed.include_usage)
        else:
            response, status = await _whole(stream, deadlines, shape)
        return response
    finally:
        dispatcher.release(stream)
        metrics.requests.labels(outcome_of(status), str(status)).inc()
        metrics.e2e_request_latency.observe(time.monotonic() - admitted_at)
        if stream.prompt_tokens:
            metrics.prompt_tokens.inc(stream.prompt_tokens)


async def _next(stream: RequestStream, deadlines: Deadlines) -> tuple[list[PendingDelta], bool]:
    """The next merged deltas, and whether they are the last; raises ApiError on failure or a passed deadline."""
    while True:
        batch = stream.take()
        if stream.error is not None:
            raise stream.error
        if batch or stream.finished:
            if any(d.finish_reason == "abort" for d in batch):
                raise _aborted_by_worker(stream, deadlines)
            return batch, stream.finished
        try:
            async with asyncio.timeout(deadlines.remaining(stream.started)):
                await stream.wait()
        except TimeoutError:
            raise deadlines.expired(stream.started) from None


def _aborted_by_worker(stream: RequestStream, deadlines: Deadlines) -> ApiError:
    deadline = stream.request.deadline
    if deadline is not None and time.time() >= deadline - 0.05:
        return deadlines.expired(True)
    return ApiError(503, "the worker aborted the request (it is shutting down); retry it", code="aborted")


async def _whole(stream: RequestStream, deadlines: Deadlines, shape: ResponseShape) -> tuple[web.Response, int]:
    choices: dict[int, PendingDelta] = {}
    try:
        done = False
        while not done:
            batch, done = await _next(stream, deadlines)
            for delta in batch:
                choices.setdefault(delta.index, PendingDelta(delta.index)).absorb(delta)
    except ApiError as error:
        return error.response(), error.status
    body = shape.whole([choices[i] for i in sorted(choices)], stream.usage)
    return web.json_response(body), 200


async def _streamed(
    request: web.Request, stream: RequestStream, deadlines: Deadlines, shape: ResponseShape, include_usage: bool
) -> tuple[web.StreamResponse, int]:
    try:
        batch, done = await _next(stream, deadlines)
    except ApiError as error:
        return error.response(), error.status
    response = web.StreamResponse(headers=SSE_HEADERS)
    try:
        await response.prepare(request)
        opening = [sse(shape.role_chunk(i, include_usage)) for i in range(stream.n)] if shape.chat else []
        await response.write(b"".join(opening) + (sse(shape.chunk(batch, include_usage)) if batch else b""))
        status = 200
        try:
            while not done:
                batch, done = await _next(stream, deadlines)
                if batch:
                    await response.write(sse(shape.chunk(batch, include_usage)))
            tail = sse(shape.usage_chunk(stream.usage)) if include_usage else b""
        except ApiError as error:
            tail, status = sse(error.body()), error.status
        await response.write(tail + DONE)
        return response, status
    except ConnectionError:  # the client went away mid-stream; the caller aborts the request
        return response, CLIENT_CLOSED
