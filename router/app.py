"""The aiohttp application factory: routes, middlewares, and the sockets, workers and tasks of its lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import zmq
import zmq.asyncio
from aiohttp import web

from protocol.sockets import RunDirectory, make_socket
from router.auth import bearer_auth
from router.config import ServeConfig
from router.errors import ApiError
from router.handlers import add_routes
from router.state import ROUTER, RouterState

log = logging.getLogger("gpupool.app")


def create_app(config: ServeConfig) -> web.Application:
    app = web.Application(
        client_max_size=config.limits.max_body_bytes,
        middlewares=[openai_errors, bearer_auth(config.api_keys)],
    )
    app[ROUTER] = RouterState.build(config)
    add_routes(app)
    app.cleanup_ctx.append(workers_and_sockets)
    return app


async def workers_and_sockets(app: web.Application) -> AsyncIterator[None]:
    """Bind both sockets in a private run dir, start the receive tasks and the workers; undo it all in reverse."""
    state = app[ROUTER]
    run_dir = RunDirectory()
    addresses = run_dir.addresses()
    log.info("run dir %s", run_dir.path)
    ctx = zmq.asyncio.Context()
    requests = make_socket(ctx, zmq.ROUTER, bind=addresses.requests, router_mandatory=True)
    outputs = make_socket(ctx, zmq.PULL, bind=addresses.outputs)
    state.dispatcher.attach(requests)
    tasks = [
        asyncio.create_task(state.dispatcher.receive_outputs(outputs), name="receive-outputs"),
        asyncio.create_task(state.supervisor.receive_handshakes(requests), name="receive-handshakes"),
        asyncio.create_task(state.supervisor.watch(), name="watchdog"),
    ]
    for task in tasks:
        task.add_done_callback(_log_crash)
    try:
        await state.supervisor.start_all(addresses)
        yield
    finally:
        await state.supervisor.stop_all()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        state.dispatcher.attach(None)
        requests.close(linger=0)
        outputs.close(linger=0)
        ctx.term()
        run_dir.remove()


def _log_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("task %s crashed", task.get_name(), exc_info=task.exception())


@web.middleware
async def openai_errors(request: web.Request, handler):
    """Every error leaves in OpenAI's shape, including aiohttp's own 404/405/413 and anything unexpected."""
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = {404: f"no route {request.path}", 405: f"method {request.method} is not allowed on {request.path}",
                   413: "the request body is too large"}.get(exc.status, exc.reason)
        return ApiError(exc.status, message, headers=headers).response()
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        with contextlib.suppress(Exception):
            request.app[ROUTER].metrics.requests.labels("error", "500").inc()
        return ApiError(500, "internal error; see the server log", code="internal_error").response()
