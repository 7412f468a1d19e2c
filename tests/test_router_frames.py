"""Frames the router must drop: malformed ones are counted as bad, ones from a stale or unknown worker epoch as
stale; neither disturbs the live workers or the requests on them."""

from __future__ import annotations

import re

import aiohttp
import msgpack
import zmq
import zmq.asyncio

from protocol import PROTOCOL_VERSION
from protocol.codec import encode
from protocol.messages import Handshake, SequenceDelta, StepOutputs, WorkerStats
from protocol.sockets import make_socket, worker_identity
from tests.conftest import metric_values, wait_until


async def test_bad_and_stale_frames_are_dropped_and_counted(start_router):
    router = start_router("--model", "sim:2", "--devices", "cpu")
    run_dir = re.search(r"run dir (\S+)", "".join(router.lines)).group(1)
    ctx = zmq.asyncio.Context()
    push = make_socket(ctx, zmq.PUSH, connect=f"ipc://{run_dir}/outputs.sock", linger_ms=1000)
    dealer = make_socket(ctx, zmq.DEALER, connect=f"ipc://{run_dir}/requests.sock", identity=worker_identity(0, 9))
    try:
        bad = [b"not msgpack \xc1", msgpack.packb([PROTOCOL_VERSION, "NoSuchMessage", []]),
               msgpack.packb([99, "Goodbye", [0, 0]]), msgpack.packb([PROTOCOL_VERSION, "WorkerStats", ["zero", 0]])]
        stale = [
            encode(StepOutputs.from_deltas(0, 9, 1, [SequenceDelta("cmpl-nobody", 0, [1], "x", None, 1, 1)])),
            encode(WorkerStats(7, 0, 0, 0, 0, 1, 0.0, 0, 0)),
        ]
        for frame in bad + stale:
            await push.send(frame)
        await dealer.send(encode(Handshake(0, 9, 1, "cpu", "impostor", 8, 8, 1, False)))
        await dealer.send(b"\x00garbage")

        async with aiohttp.ClientSession() as session:
            async def counted() -> bool:
                async with session.get(router.url + "/metrics") as response:
                    text = await response.text()
                return (metric_values(text, "gpupool_bad_frames_total") == {"": len(bad) + 1}
                        and metric_values(text, "gpupool_stale_frames_total") == {"": len(stale) + 1})

            await wait_until(counted, 10, "the frames to be counted")
            body = {"model": router.model, "prompt": "still fine", "max_tokens": 3}
            async with session.post(router.url + "/v1/completions", json=body) as response:
                assert response.status == 200
            async with session.get(router.url + "/ready") as response:
                workers = (await response.json())["workers"]
            async with session.get(router.url + "/v1/models") as response:
                assert (await response.json())["data"][0]["id"] == router.model
        assert [(w["epoch"], w["state"]) for w in workers] == [(0, "ready")]
    finally:
        push.close(linger=0)
        dealer.close(linger=0)
        ctx.term()
