"""The two targets of scripts/fuzz_frames.py: a worker behind this script's sockets, and a live router."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import zmq
import zmq.asyncio

from chaos.report import Result
from chaos.server import REPO, Launcher, metrics, workers
from fuzz_corpus import (absurd_requests, bad_frames, decodes, router_samples, unexpected_at_router, unexpected_at_worker,
                         worker_samples)
from protocol.codec import decode, encode
from protocol.messages import (Abort, GenerateRequest, Goodbye, Handshake, RequestError, SamplingParams,
                               SequenceDelta, Shutdown, StartupFailed, StepOutputs, WorkerStats)
from protocol.sockets import RunDirectory, make_socket

DEADLINE_S = 60.0


def fuzz_worker(count: int, rng, out: Path) -> Result:
    run_dir = RunDirectory()
    ctx = zmq.Context()
    router = make_socket(ctx, zmq.ROUTER, bind=run_dir.addresses().requests, router_mandatory=True)
    pull = make_socket(ctx, zmq.PULL, bind=run_dir.addresses().outputs)
    command = [sys.executable, "-m", "gpu_worker", "--router", run_dir.addresses().as_arg(), "--model", "sim:1",
               "--stats-interval", "0.05"]
    with open(out / "worker.log", "w") as log:
        worker = subprocess.Popen(command, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        if not router.poll(DEADLINE_S * 1000):
            raise RuntimeError("the worker sent no handshake")
        identity, frame = router.recv_multipart()
        if type(decode(frame)) is not Handshake:
            raise RuntimeError("the worker did not start")
        frames = bad_frames(rng, worker_samples(), unexpected_at_worker())
        bad = sent = 0
        absurd = [r.request_id for r in absurd_requests(rng, count // 10)]
        for i, request in enumerate(absurd_requests(rng, count // 10)):
            router.send_multipart([identity, encode(request)])
            router.send_multipart([identity, encode(Abort([f"never-{i}"]))])  # unknown ids: not bad frames
        while bad < count:
            _, parts, n_bad = next(frames)
            if rng.random() < 0.05:
                parts = parts + [next(frames)[1][0]]  # a multi-part message is one bad message to a worker
                n_bad = 1
            router.send_multipart([identity, *parts])
            bad, sent = bad + n_bad, sent + len(parts)
        router.send_multipart([identity, encode(Abort(absurd))])  # some of them would run for ever
        rejected, counted = set(), 0
        deadline = time.monotonic() + DEADLINE_S
        while counted < bad and time.monotonic() < deadline and pull.poll(1000):
            message = decode(pull.recv())
            if type(message) is WorkerStats:
                counted = message.bad_frames
            elif type(message) is RequestError:
                rejected.add(message.request_id)
        router.send_multipart([identity, encode(GenerateRequest("final", SamplingParams(max_tokens=8), prompt="ok"))])
        finished = _await_finish(pull, "final")
        alive = worker.poll() is None
        router.send_multipart([identity, encode(Shutdown())])
        goodbye = _await_type(pull, Goodbye)
        code = worker.wait(DEADLINE_S)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(DEADLINE_S)
        router.close(linger=0)
        pull.close(linger=0)
        ctx.term()
        run_dir.remove()
    result = Result("frames->worker", {
        "bad_sent": bad, "parts_sent": sent, "worker_counted": counted, "absurd_requests": len(absurd),
        "absurd_rejected": len(rejected), "served_after": finished, "alive": alive, "goodbye": goodbye,
        "exit_code": code,
    })
    result.check("no crash", alive and code == 0 and goodbye)
    result.check("every bad frame counted", counted == bad)
    result.check("serving continues", finished)
    return result


def _await_finish(pull: zmq.Socket, request_id: str) -> bool:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and pull.poll(1000):
        message = decode(pull.recv())
        if type(message) is StepOutputs and any(d.request_id == request_id and d.finish_reason for d in message.deltas()):
            return True
    return False


def _await_type(pull: zmq.Socket, kind: type) -> bool:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and pull.poll(1000):
        if type(decode(pull.recv())) is kind:
            return True
    return False


def fuzz_router(count: int, rng, out: Path) -> Result:
    launcher = Launcher(out)
    try:
        server = launcher("--model", "sim:2", "--devices", "cpu,cpu")
        return asyncio.run(_fuzz_router(server, count, rng))
    finally:
        launcher.close()


async def _fuzz_router(server, count: int, rng) -> Result:
    run_dir = re.search(r"run dir (\S+)", "".join(server.lines)).group(1)
    ctx = zmq.asyncio.Context()
    push = make_socket(ctx, zmq.PUSH, connect=f"ipc://{run_dir}/outputs.sock", linger_ms=5000)
    dealer = make_socket(ctx, zmq.DEALER, connect=f"ipc://{run_dir}/requests.sock", identity=b"fuzzer")
    try:
        async with aiohttp.ClientSession() as http:
            live = await workers(http, server.url)
            epoch = live[0]["epoch"]
            frames = bad_frames(rng, router_samples(0, epoch), unexpected_at_router())
            bad = stale = unknown = 0
            while bad < count:
                _, parts, n_bad = next(frames)
                if rng.random() < 0.1:  # the request socket: a bad [identity, frame...] is one bad message
                    parts = parts + ([b"extra"] if rng.random() < 0.2 else [])
                    await dealer.send_multipart(parts)
                    if len(parts) == 1 and decodes(parts[0], (Handshake, StartupFailed)):
                        stale += 1  # a handshake is expected there: from no starting worker, it is stale
                    else:
                        bad += 1
                    continue
                if rng.random() < 0.05:
                    parts = parts + [next(frames)[1][0]]  # each part of a multi-part message arrives on its own
                await push.send_multipart(parts)
                bad += len(parts)
                if rng.random() < 0.05:
                    await push.send(encode(StepOutputs.from_deltas(0, epoch + 100, 1, [])))  # a stale epoch
                    stale += 1
                if rng.random() < 0.05:  # unknown request ids from the live worker: dropped quietly
                    delta = SequenceDelta(f"cmpl-nobody-{bad}", 0, [1], "x", "stop", 1, 1)
                    await push.send(encode(StepOutputs.from_deltas(0, epoch, 1, [delta])))
                    await push.send(encode(RequestError(0, epoch, f"cmpl-nobody-{bad}", "x", "y", 400)))
                    unknown += 2
            counted = counted_stale = 0
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline:
                samples = await metrics(http, server.url)
                counted = samples.get("gpupool_bad_frames_total", 0.0)
                counted_stale = samples.get("gpupool_stale_frames_total", 0.0)
                if counted >= bad and counted_stale >= stale:
                    break
                await asyncio.sleep(0.2)
            body = {"model": server.model, "prompt": "still serving", "max_tokens": 5}
            async with http.post(server.url + "/v1/completions", json=body) as response:
                served = response.status == 200
            after = await workers(http, server.url)
            restarts = (await metrics(http, server.url)).get("gpupool_worker_restarts_total", 0.0)
    finally:
        push.close(linger=0)
        dealer.close(linger=0)
        ctx.term()
    result = Result("frames->router", {
        "bad_sent": bad, "router_counted": counted, "stale_sent": stale, "stale_counted": counted_stale,
        "unknown_id_frames": unknown, "served_after": served, "restarts": restarts,
        "router_alive": server.process.poll() is None,
    })
    result.check("no crash", server.process.poll() is None and restarts == 0
                 and [w["pid"] for w in after] == [w["pid"] for w in live])
    result.check("every bad frame counted", counted == bad and counted_stale == stale)
    result.check("serving continues", served)
    return result
