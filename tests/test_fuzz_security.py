"""Security basics the other tests do not already show: the run directory is private while serving, a frame over
the ZeroMQ size cap never reaches the router, and a prompt's text is capped by the context length (so no request
makes a worker tokenize megabytes). Also shown elsewhere: constant-time keys and 401s (test_router_auth), the run
directory removed on exit (test_router_shutdown), the body cap and the n, max_tokens, logprobs and stop caps
(test_router_bad_input), and absurd values refused by a worker (test_fuzz_sampling)."""

from __future__ import annotations

import os
import re
import stat

import aiohttp
import zmq
import zmq.asyncio

from protocol.codec import DEFAULT_MAX_FRAME_BYTES
from protocol.sockets import make_socket
from tests.conftest import metric_values, wait_until


async def test_run_dir_is_private_and_oversized_frames_never_arrive(start_router):
    router = start_router("--model", "sim:1", "--devices", "cpu")
    run_dir = re.search(r"run dir (\S+)", "".join(router.lines)).group(1)
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
    ctx = zmq.asyncio.Context()
    push = make_socket(ctx, zmq.PUSH, connect=f"ipc://{run_dir}/outputs.sock", max_message_bytes=-1)
    try:
        await push.send(b"\x00" * (DEFAULT_MAX_FRAME_BYTES + 1))  # ZeroMQ drops it and the connection
        await push.send(b"\xc1 after the reconnect")  # a bad frame the router does receive
        async with aiohttp.ClientSession() as session:
            async def counted() -> bool:
                async with session.get(router.url + "/metrics") as response:
                    return metric_values(await response.text(), "gpupool_bad_frames_total") == {"": 1.0}

            await wait_until(counted, 15, "the small bad frame to be counted")
            body = {"model": router.model, "prompt": "fine", "max_tokens": 2}
            async with session.post(router.url + "/v1/completions", json=body) as response:
                assert response.status == 200
    finally:
        push.close(linger=0)
        ctx.term()


async def test_prompt_text_is_capped_by_the_context(start_router):
    router = start_router("--model", "sim:1", "--devices", "cpu")
    async with aiohttp.ClientSession() as session:
        async with session.get(router.url + "/v1/models") as response:
            context = (await response.json())["data"][0]["max_model_len"]
        too_long = "ab" * (context * 16 + 1)
        for path, body in (("/v1/completions", {"prompt": too_long}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": too_long[:-2]},
                                                                  {"role": "user", "content": "ab"}]})):
            async with session.post(router.url + path, json={"model": router.model, **body}) as response:
                assert response.status == 400
                assert (await response.json())["error"]["code"] == "context_length_exceeded"
