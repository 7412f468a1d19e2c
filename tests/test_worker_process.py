"""A real worker process driven over real ZeroMQ sockets: handshake, generate, stream, abort, garbage, shutdown."""

import os
import subprocess
import sys
import time

import pytest
import zmq

from protocol import decode, encode
from protocol import messages as m
from protocol.sockets import RunDirectory, make_socket

DEADLINE_S = 60


class RouterEnd:
    """The router's two sockets, bound in a private run directory, with blocking helpers that have deadlines."""

    def __init__(self) -> None:
        self.run_dir = RunDirectory()
        self.addresses = self.run_dir.addresses()
        self.ctx = zmq.Context()
        self.router = make_socket(self.ctx, zmq.ROUTER, bind=self.addresses.requests, router_mandatory=True)
        self.pull = make_socket(self.ctx, zmq.PULL, bind=self.addresses.outputs)
        self.identity: bytes | None = None
        self.history: list = []

    def spawn(self, *args: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "gpu_worker", "--router", self.addresses.as_arg(), "--stats-interval", "0.05"]
        return subprocess.Popen([*cmd, *args])

    def handshake(self, timeout: float = DEADLINE_S) -> m.Handshake | m.StartupFailed:
        assert self.router.poll(timeout * 1000), "no handshake in time"
        identity, frame = self.router.recv_multipart()
        self.identity = identity
        return decode(frame)

    def send(self, message) -> None:
        self.router.send_multipart([self.identity, encode(message)])

    def send_raw(self, *frames: bytes) -> None:
        self.router.send_multipart([self.identity, *frames])

    def next_output(self, timeout: float = DEADLINE_S):
        assert self.pull.poll(timeout * 1000), "no output in time"
        message = decode(self.pull.recv())
        self.history.append(message)
        return message

    def collect(self, request_ids: set[str], timeout: float = DEADLINE_S) -> dict[str, list]:
        """Every delta and error (received so far or later) of these requests, once each has finished or failed."""
        done: dict[str, list] = {rid: [] for rid in request_ids}
        open_ids = set(request_ids)
        seen = 0
        deadline = time.monotonic() + timeout
        while open_ids:
            if seen == len(self.history):
                self.next_output(max(0.0, deadline - time.monotonic()))
            msg = self.history[seen]
            seen += 1
            if isinstance(msg, m.StepOutputs):
                for d in msg.deltas():
                    if d.request_id in done:
                        done[d.request_id].append(d)
                        if d.finish_reason is not None:
                            open_ids.discard(d.request_id)
            elif isinstance(msg, m.RequestError) and msg.request_id in done:
                done[msg.request_id].append(msg)
                open_ids.discard(msg.request_id)
        return done

    def wait_for(self, predicate, timeout: float = DEADLINE_S):
        """The next message received from now on that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next_output(max(0.0, deadline - time.monotonic()))
            if predicate(msg):
                return msg

    def close(self) -> None:
        self.router.close(0)
        self.pull.close(0)
        self.ctx.term()
        self.run_dir.remove()


@pytest.fixture
def router_end():
    end = RouterEnd()
    yield end
    end.close()


def request(rid: str, prompt: str = "Hello there", max_tokens: int = 8, **sampling) -> m.GenerateRequest:
    return m.GenerateRequest(rid, m.SamplingParams(max_tokens=max_tokens, **sampling), prompt=prompt)


def finish(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("model", ["sim:1", "builtin"])
def test_worker_serves_streams_aborts_and_survives_garbage(router_end, model):
    proc = router_end.spawn("--model", model, "--worker-id", "3", "--epoch", "7", "--threads", "1")
    try:
        hello = router_end.handshake()
        assert isinstance(hello, m.Handshake), hello
        assert (hello.worker_id, hello.epoch, hello.pid) == (3, 7, proc.pid)
        assert hello.context_length > 0 and hello.kv_capacity_tokens >= hello.context_length
        assert hello.has_chat_template

        router_end.send(request("a", max_tokens=12, ignore_eos=True))  # the trained model may sample EOS early
        chat = m.GenerateRequest("chat", m.SamplingParams(max_tokens=5), messages=[m.ChatMessage("user", "hi")])
        router_end.send(chat)
        router_end.send(request("too-long", prompt="word " * 5000))
        router_end.send(request("long", max_tokens=2000, ignore_eos=True))
        first = router_end.wait_for(lambda x: isinstance(x, m.StepOutputs) and any(d.request_id == "long" for d in x.deltas()))
        assert first.worker_id == 3 and first.epoch == 7

        garbage = [os.urandom(50), b"", encode(m.Goodbye(0, 0)), b"\x93\x02\xa5Abort\x91\xc0", b"\xff" * 2000]
        for frame in garbage:
            router_end.send_raw(frame)
        router_end.send_raw(encode(m.Drain()), encode(m.Drain()))  # two frames where one is expected
        router_end.send(m.Abort(["long", "no-such-request"]))

        results = router_end.collect({"a", "chat", "too-long", "long"})
        assert results["a"][-1].finish_reason == "length" and results["a"][-1].completion_tokens == 12
        assert "".join(d.text for d in results["a"]) != "" or model == "builtin"
        assert sum(len(d.token_ids) for d in results["a"]) == 12
        assert results["chat"][-1].finish_reason in ("stop", "length")
        error = results["too-long"][-1]
        assert isinstance(error, m.RequestError) and error.code == "context_length_exceeded" and error.status == 400
        assert results["long"][-1].finish_reason == "abort"

        stats = router_end.wait_for(lambda x: isinstance(x, m.WorkerStats) and x.bad_frames >= len(garbage) + 1)
        assert stats.bad_frames == len(garbage) + 1
        stats = router_end.wait_for(lambda x: isinstance(x, m.WorkerStats) and x.running == 0)
        assert stats.kv_blocks_used == 0 and stats.waiting == 0

        router_end.send(request("after-garbage", max_tokens=3, ignore_eos=True))  # still serving
        assert router_end.collect({"after-garbage"})["after-garbage"][-1].finish_reason == "length"

        router_end.send(request("in-flight", max_tokens=2000, ignore_eos=True))
        router_end.wait_for(lambda x: isinstance(x, m.StepOutputs))
        router_end.send(m.Shutdown())
        goodbye = router_end.wait_for(lambda x: isinstance(x, m.Goodbye))
        assert goodbye.worker_id == 3
        assert finish(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_worker_that_cannot_start_says_why_and_exits_nonzero(router_end, tmp_path):
    proc = router_end.spawn("--model", str(tmp_path / "missing-model"))
    failed = router_end.handshake()
    assert isinstance(failed, m.StartupFailed)
    assert "missing-model" in failed.message
    assert finish(proc) != 0


def test_worker_with_bad_config_says_why(router_end):
    proc = router_end.spawn("--model", "sim:fast")
    failed = router_end.handshake()
    assert isinstance(failed, m.StartupFailed) and "sim:fast" in failed.message
    assert finish(proc) != 0
