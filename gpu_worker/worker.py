"""The worker process's loop: drain messages, step the engine, send one StepOutputs frame per step."""

from __future__ import annotations

import gc
import logging
import os
import signal
import time

import zmq

from gpu_worker.build import BuiltEngine, build_engine
from gpu_worker.config import WorkerConfig
from gpu_worker.heap import heap_trimmer
from protocol import ProtocolError, decode, encode
from protocol.messages import (
    TO_WORKER,
    Abort,
    Drain,
    GenerateRequest,
    Goodbye,
    Handshake,
    RequestError,
    Shutdown,
    StartupFailed,
    StepOutputs,
    WorkerStats,
)
from protocol.sockets import Addresses, make_socket, worker_identity

log = logging.getLogger(__name__)

MAX_MESSAGES_PER_DRAIN = 4096  # a flood of requests must not starve the running batch
# Under unbroken load the worker never falls idle, so the idle-time trim never runs and one burst's freed heap
# stays counted in RSS for good (a soak's +3 and +7 MB steps at minute 6, then flat). malloc_trim took 0.5 ms on
# its first call and microseconds after, so every 30 s costs nothing measurable.
BUSY_TRIM_INTERVAL_S = 30.0


class WorkerLoop:
    def __init__(self, config: WorkerConfig, built: BuiltEngine, dealer: zmq.Socket, push: zmq.Socket) -> None:
        self.config = config
        self.built = built
        self.engine = built.engine
        self.dealer = dealer
        self.push = push
        self.draining = False
        self.stopping = False
        self.bad_frames = 0
        self.parent_pid = os.getppid()
        self.trim_heap = heap_trimmer()
        self.next_busy_trim = time.monotonic() + BUSY_TRIM_INTERVAL_S

    def run(self) -> int:
        next_stats = 0.0
        was_busy = False
        while not self.stopping:
            now = time.monotonic()
            idle_ms = 0 if self.engine.has_work() else max(0.0, next_stats - now) * 1000
            if self.dealer.poll(idle_ms, zmq.POLLIN):
                self._drain_messages()
            busy = self.engine.has_work()
            if busy:
                self._send_step()
            if (was_busy and not busy) or (busy and now >= self.next_busy_trim):
                self.trim_heap()
                self.next_busy_trim = time.monotonic() + BUSY_TRIM_INTERVAL_S
            was_busy = busy
            self._send_rejections()
            if time.monotonic() >= next_stats:
                self._send_stats()
                next_stats = time.monotonic() + self.config.stats_interval
                if os.getppid() != self.parent_pid:
                    log.warning("the process that started this worker is gone; exiting")
                    break
        return self._shut_down()

    def stop(self, *_: object) -> None:
        self.stopping = True

    # ------------------------------------------------------------------ messages in

    def _drain_messages(self) -> None:
        for _ in range(MAX_MESSAGES_PER_DRAIN):
            if not self.dealer.poll(0, zmq.POLLIN):
                return
            frames = self.dealer.recv_multipart()
            if len(frames) != 1:
                self._bad_frame(f"expected 1 frame, got {len(frames)}")
                continue
            try:
                message = decode(frames[0], expect=TO_WORKER)
            except ProtocolError as exc:
                self._bad_frame(str(exc))
                continue
            self._handle(message)

    def _handle(self, message: object) -> None:
        if isinstance(message, GenerateRequest):
            if self.draining:
                self._send_error(message.request_id, "draining", "the worker is shutting down", 503)
                return
            problem = self._sampling_problem(message)
            if problem is not None:
                self._send_error(message.request_id, "invalid_request", problem, 400)
                return
            rejection = self.engine.add_request(message)
            if rejection is not None:
                self._send_error(rejection.request_id, rejection.code, rejection.message, rejection.status)
        elif isinstance(message, Abort):
            self.engine.abort(message.request_ids)
        elif isinstance(message, Drain):
            self.draining = True
        elif isinstance(message, Shutdown):
            self.stopping = True

    def _sampling_problem(self, request: GenerateRequest) -> str | None:
        sampling = request.sampling
        if sampling.n > self.config.max_running:
            return f"n must be at most {self.config.max_running}, the sequences this worker runs at once"
        if sampling.logprobs is not None and sampling.logprobs > self.engine.tokenizer.vocab_size:
            return "logprobs must not exceed the vocabulary size"
        return sampling.problem()

    def _bad_frame(self, reason: str) -> None:
        self.bad_frames += 1
        if self.bad_frames <= 10 or self.bad_frames % 1000 == 0:
            log.warning("dropped bad frame #%d: %s", self.bad_frames, reason)

    # ------------------------------------------------------------------ frames out

    def _send_step(self) -> None:
        deltas = self.engine.step()
        if deltas:
            c = self.config
            self.push.send(encode(StepOutputs.from_deltas(c.worker_id, c.epoch, self.engine.steps_done, deltas)))

    def _send_rejections(self) -> None:
        for r in self.engine.take_rejections():
            self._send_error(r.request_id, r.code, r.message, r.status)

    def _send_error(self, request_id: str, code: str, message: str, status: int) -> None:
        c = self.config
        self.push.send(encode(RequestError(c.worker_id, c.epoch, request_id, code, message, status)))

    def _send_stats(self) -> None:
        c, e = self.config, self.engine
        stats = WorkerStats(
            c.worker_id,
            c.epoch,
            running=len(e.scheduler.running),
            waiting=len(e.scheduler.waiting),
            kv_blocks_used=e.blocks.num_used_blocks,
            kv_blocks_total=e.blocks.num_blocks,
            last_step_ms=e.last_step_ms,
            steps_done=e.steps_done,
            bad_frames=self.bad_frames,
            prefix_cache_hit_tokens=e.blocks.prefix_hit_tokens,
        )
        self.push.send(encode(stats))

    def _shut_down(self) -> int:
        """Abort what is left, send its last deltas and a final stats frame, then Goodbye: the last frame."""
        self.engine.abort(list(self.engine.requests))
        self._send_step()
        self._send_rejections()
        self._send_stats()
        c = self.config
        self.push.send(encode(Goodbye(c.worker_id, c.epoch)))
        return 0


def run_worker(config: WorkerConfig) -> int:
    ctx = zmq.Context()
    identity = worker_identity(config.worker_id, config.epoch)
    dealer = make_socket(ctx, zmq.DEALER, connect=config.addresses.requests, identity=identity)
    push = make_socket(ctx, zmq.PUSH, connect=config.addresses.outputs)
    try:
        try:
            built = build_engine(config)
        except Exception as exc:  # whatever stops a start, the router must hear its cause
            log.exception("worker %d cannot start", config.worker_id)
            message = f"worker {config.worker_id} cannot start: {type(exc).__name__}: {exc}"
            dealer.send(encode(StartupFailed(config.worker_id, config.epoch, message)))
            return 1
        loop = WorkerLoop(config, built, dealer, push)
        signal.signal(signal.SIGTERM, loop.stop)
        signal.signal(signal.SIGINT, loop.stop)
        dealer.send(encode(_handshake(config, built)))
        log.info("worker %d ready on %s: %s", config.worker_id, built.device, config.model_name)
        gc.collect()
        gc.freeze()  # torch's and the model's objects are never rescanned: one full collection had stalled a step 163 ms
        return loop.run()
    finally:
        dealer.close()  # linger (protocol.sockets.DEFAULT_LINGER_MS) lets the last frames out
        push.close()
        ctx.term()


def report_bad_config(args, message: str) -> int:
    """Tell the router (when its address at least is usable) why this worker cannot start; exit status 2."""
    logging.getLogger(__name__).error("bad worker configuration: %s", message)
    try:
        addresses = Addresses.from_arg(args.router)
    except ValueError:
        return 2
    ctx = zmq.Context()
    identity = worker_identity(args.worker_id, args.epoch)
    dealer = make_socket(ctx, zmq.DEALER, connect=addresses.requests, identity=identity)
    dealer.send(encode(StartupFailed(args.worker_id, args.epoch, f"bad worker configuration: {message}")))
    dealer.close()
    ctx.term()
    return 2


def _handshake(config: WorkerConfig, built: BuiltEngine) -> Handshake:
    return Handshake(
        worker_id=config.worker_id,
        epoch=config.epoch,
        pid=os.getpid(),
        device=built.device,
        model_name=config.model_name,
        context_length=built.context_length,
        kv_capacity_tokens=built.kv_capacity_tokens,
        max_running=config.max_running,
        has_chat_template=built.has_chat_template,
    )
