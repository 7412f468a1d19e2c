"""The routes every baseline server shares: the served model's name, `/v1/models` and `/health`."""

from __future__ import annotations

from aiohttp import web

MODEL_NAME = web.AppKey("model_name", str)


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": request.app[MODEL_NAME], "object": "model"}]})


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")
