"""The HTTP layer's limit: a bare aiohttp server streaming gpupool's completion chunks at full speed, no model.

    python scripts/baselines/bare_sse.py --port 8002

POST /v1/completions streams `max_tokens` chunks of the same JSON shape as gpupool's (one `json.dumps` per chunk, as
the router does), then the usage chunk when asked and `data: [DONE]`. Between chunks it yields to the event loop once
(`--no-yield` to write a whole stream without yielding), so concurrent streams interleave as they do through the
router. Comparing gpupool with `--model sim:0` against this gives the share of the HTTP layer's throughput that the
router keeps, and the latency it adds per token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from aiohttp import web
from openai_routes import MODEL_NAME, health, models  # a sibling module: these run as scripts

WORDS = [" the", " value", " return", " self", " import", " data", " function", " list"]
HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
YIELD = web.AppKey("yield_between_chunks", bool)


def sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


async def completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    max_tokens = int(body.get("max_tokens", 16))
    prompt = body.get("prompt", "")
    prompt_tokens = len(prompt) if isinstance(prompt, list) else len(prompt.split())
    with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    response = web.StreamResponse(headers=HEADERS)
    await response.prepare(request)
    response_id, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), request.app[MODEL_NAME]
    interleave = request.app[YIELD]
    for i in range(max_tokens):
        last = i == max_tokens - 1
        choice = {"index": 0, "text": WORDS[i % len(WORDS)], "logprobs": None,
                  "finish_reason": "length" if last else None}
        if last:
            choice["stop_reason"] = None
        chunk = {"id": response_id, "object": "text_completion", "created": created, "model": model,
                 "choices": [choice]}
        if with_usage:
            chunk["usage"] = None
        await response.write(sse(chunk))
        if interleave:
            await asyncio.sleep(0)
    if with_usage:
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens,
                 "total_tokens": prompt_tokens + max_tokens}
        await response.write(sse({"id": response_id, "object": "text_completion", "created": created, "model": model,
                                  "choices": [], "usage": usage}))
    await response.write(b"data: [DONE]\n\n")
    return response


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--served-model-name", default="bare-sse")
    p.add_argument("--no-yield", action="store_true", help="write each stream without yielding between chunks")
    args = p.parse_args()
    app = web.Application()
    app[YIELD] = not args.no_yield
    app[MODEL_NAME] = args.served_model_name
    app.add_routes([web.post("/v1/completions", completions), web.get("/v1/models", models),
                    web.get("/health", health)])
    print(f"bare SSE server on http://{args.host}:{args.port}", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
