"""Bearer-token check on /v1/*, constant time; /health, /ready and /metrics stay open."""

from __future__ import annotations

import hmac

from aiohttp import web

from router.errors import ApiError

PROTECTED_PREFIX = "/v1"


def bearer_auth(api_keys: tuple[str, ...]):
    keys = [key.encode() for key in api_keys]

    @web.middleware
    async def check_api_key(request: web.Request, handler):
        path = request.path
        if keys and (path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")):
            if not _authorized(request.headers.get("Authorization", ""), keys):
                raise ApiError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'",
                               code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check_api_key


def _authorized(header: str, keys: list[bytes]) -> bool:
    scheme, _, token = header.partition(" ")
    presented = token.strip().encode()
    matched = False
    for key in keys:  # every key is compared, so the time does not tell which one came close
        matched |= hmac.compare_digest(presented, key)
    return matched and scheme.lower() == "bearer"
