"""The seeds' design, as a baseline: an aiohttp handler that runs transformers' `model.generate` in a thread pool.

    python scripts/baselines/seeds_server.py --model DIR --port 8001 [--replicas 1] [--dtype float32]

One request at a time per model replica: the pool has one thread per replica, and each thread owns its replica for
the whole `generate` call. Tokens stream back through a generate streamer and `call_soon_threadsafe`, as SSE chunks
of OpenAI's /v1/completions shape. A client that leaves stops its generate at the next token. `ignore_eos` becomes
`min_new_tokens`. There is no batching, no paged KV cache and no scheduling: that is the point of this baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import torch
from aiohttp import web
from openai_routes import MODEL_NAME, health, models  # a sibling module: these run as scripts
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TokenStreamer(BaseStreamer):
    """Hands each new token id to the event loop; the first `put` is the prompt and is skipped."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tokens: asyncio.Queue) -> None:
        self.loop, self.tokens, self.prompt_seen = loop, tokens, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.loop.call_soon_threadsafe(self.tokens.put_nowait, int(value.reshape(-1)[0]))

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.tokens.put_nowait, None)


class ClientGone(StoppingCriteria):
    def __init__(self, gone: threading.Event) -> None:
        self.gone = gone

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.gone.is_set(), dtype=torch.bool)


class Replicas:
    """N copies of the model; each pool thread takes one for one whole request."""

    def __init__(self, model_dir: str, count: int, dtype: torch.dtype) -> None:
        self.free: queue.Queue = queue.Queue()
        for _ in range(count):
            self.free.put(AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval())
        self.pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="replica")

    def generate(self, prompt_ids: list[int], kwargs: dict) -> None:
        model = self.free.get()
        try:
            with torch.inference_mode():
                model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids),
                               dtype=torch.long), **kwargs)
        finally:
            self.free.put(model)


def chunk(response_id: str, model: str, text: str, finish_reason: str | None = None, usage=None) -> bytes:
    body = {"id": response_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
    if usage is not None:
        body = {**body, "choices": [], "usage": usage}
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                        "code": None}}, status=status)


async def completions(request: web.Request) -> web.StreamResponse:
    app = request.app
    try:
        body = await request.json()
        prompt = body["prompt"]
        max_tokens = int(body.get("max_tokens", 16))
        temperature = float(body.get("temperature", 1.0))
    except (ValueError, KeyError, TypeError) as exc:
        return error(400, f"bad request: {exc!r}")
    tokenizer = app[TOKENIZER]
    prompt_ids = prompt if isinstance(prompt, list) else tokenizer(prompt)["input_ids"]
    loop = asyncio.get_running_loop()
    tokens: asyncio.Queue = asyncio.Queue()
    gone = threading.Event()
    kwargs = dict(max_new_tokens=max_tokens, do_sample=temperature > 0, streamer=TokenStreamer(loop, tokens),
                  stopping_criteria=StoppingCriteriaList([ClientGone(gone)]), pad_token_id=tokenizer.eos_token_id)
    if temperature > 0:
        kwargs["temperature"] = temperature
    if body.get("ignore_eos"):
        kwargs["min_new_tokens"] = max_tokens
    done = loop.run_in_executor(app[REPLICAS].pool, app[REPLICAS].generate, prompt_ids, kwargs)
    done.add_done_callback(lambda _: tokens.put_nowait(None))  # ends the loop below if generate raised
    response_id, model, generated = f"cmpl-{uuid.uuid4().hex}", app[MODEL_NAME], []
    stream = bool(body.get("stream"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    try:
        if stream:
            await response.prepare(request)
        while (token := await tokens.get()) is not None:
            generated.append(token)
            if stream:
                await response.write(chunk(response_id, model, tokenizer.decode([token])))
        await done
    except BaseException as exc:
        gone.set()
        if not (stream and response.prepared) or not isinstance(exc, Exception) or isinstance(exc, ConnectionError):
            raise  # cancelled (the client left), or nothing to write the error into
        await response.write(b"data: " + json.dumps({"error": {"message": repr(exc)}}).encode() + b"\n\n")
        return response
    usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(generated),
             "total_tokens": len(prompt_ids) + len(generated)}
    finish = "length" if len(generated) >= max_tokens else "stop"
    if not stream:
        return web.json_response({"id": response_id, "object": "text_completion", "created": int(time.time()),
                                  "model": model, "usage": usage, "choices": [
                                      {"index": 0, "text": tokenizer.decode(generated), "finish_reason": finish}]})
    await response.write(chunk(response_id, model, "", finish))
    if (body.get("stream_options") or {}).get("include_usage"):
        await response.write(chunk(response_id, model, "", usage=usage))
    await response.write(b"data: [DONE]\n\n")
    return response


REPLICAS = web.AppKey("replicas", Replicas)
TOKENIZER = web.AppKey("tokenizer", object)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a transformers model dir")
    p.add_argument("--served-model-name", default="bench")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--replicas", type=int, default=1, help="model copies = pool threads = requests at once")
    p.add_argument("--threads", type=int, help="torch threads (default: CPUs / replicas)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = p.parse_args()
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // args.replicas))
    app = web.Application()
    app[REPLICAS] = Replicas(args.model, args.replicas, DTYPES[args.dtype])
    app[TOKENIZER] = AutoTokenizer.from_pretrained(args.model)
    app[MODEL_NAME] = args.served_model_name
    app.add_routes([web.post("/v1/completions", completions), web.get("/v1/models", models),
                    web.get("/health", health)])
    print(f"seeds baseline: {args.replicas} replica(s) of {args.model}, {torch.get_num_threads()} torch threads",
          flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
