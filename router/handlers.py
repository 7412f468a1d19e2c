"""The HTTP endpoints: generation, models, health, readiness and metrics."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from router.errors import ApiError, invalid
from router.generate import generate, outcome_of
from router.openai_schema import parse_chat, parse_completion
from router.state import ROUTER, RouterState
from router.workers import WorkerState

log = logging.getLogger("gpupool.http")

OPENAPI_PATH = Path(__file__).with_name("openapi.json")  # docs/openapi.yaml as JSON: scripts/fuzz_openapi.py --export
OPENAPI = web.AppKey("gpupool_openapi", bytes)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generation(request, chat=False)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generation(request, chat=True)


async def _generation(request: web.Request, chat: bool) -> web.StreamResponse:
    state = request.app[ROUTER]
    refusal = state.admission.refuse_early(state.dispatcher.waiting)
    if refusal is not None:
        return _refused(state, refusal)
    try:
        body = await _read_json(request)
        model = state.model_info()
        parse = parse_chat if chat else parse_completion
        parsed = parse(body, model, state.config.limits)
        return await generate(request, parsed, state.dispatcher, state.metrics,
                              state.config.first_token_timeout, state.config.request_timeout)
    except ApiError as error:  # refused before admission
        return _refused(state, error)


def _refused(state: RouterState, error: ApiError) -> web.Response:
    state.metrics.requests.labels(outcome_of(error.status), str(error.status)).inc()
    return error.response()


async def _read_json(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[ROUTER].config.limits.max_body_bytes
        raise ApiError(413, f"the request body exceeds {limit} bytes", code="request_too_large") from None
    if not raw:
        raise invalid("the request body is empty; send a JSON object", code="invalid_json")
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise invalid(f"the request body is not valid JSON: {exc}", code="invalid_json") from None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in JSON")


async def models(request: web.Request) -> web.Response:
    state = request.app[ROUTER]
    model = state.model_info()
    card = {"id": model.name, "object": "model", "created": state.started_at, "owned_by": "gpupool",
            "root": state.config.model, "max_model_len": model.context_length}
    return web.json_response({"object": "list", "data": [card]})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    state = request.app[ROUTER]
    now = time.monotonic()
    workers = [_worker_report(state, slot, now) for slot in state.slots]
    progressing = [w for w in workers if w["state"] == WorkerState.READY.value and w["progressing"]]
    if state.admission.draining:
        status, verdict = 503, "draining"
    elif not progressing:
        status, verdict = 503, "no worker ready"
    else:
        status, verdict = 200, "ready"
    return web.json_response({"status": verdict, "workers": workers}, status=status)


def _worker_report(state: RouterState, slot, now: float) -> dict[str, Any]:
    stats = slot.stats
    return {
        "worker_id": slot.worker_id,
        "device": slot.device,
        "state": slot.state.value,
        "epoch": slot.epoch,
        "pid": slot.process.pid if slot.process is not None else None,
        "outstanding": len(slot.outstanding),
        "running": stats.running if stats else 0,
        "waiting": stats.waiting if stats else 0,
        "kv_usage": slot.kv_usage,
        "kv_capacity_tokens": slot.handshake.kv_capacity_tokens if slot.handshake else None,
        "steps_done": stats.steps_done if stats else 0,
        "progressing": not slot.outstanding or now - slot.last_progress <= state.config.stall_timeout,
    }


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[ROUTER].metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


def add_routes(app: web.Application) -> None:
    app[OPENAPI] = OPENAPI_PATH.read_bytes()
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
