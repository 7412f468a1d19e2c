"""Requests to workers and outputs back: the router's queue, the least-loaded choice, and the one receive task.

The receive task decodes each frame from the PULL socket once and hands every request its delta (a synchronous,
non-blocking push into its RequestStream). Capacity frees when a worker reports a request finished; the queue is
pumped then, at admission, and whenever a worker becomes ready.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import zmq
import zmq.asyncio

from protocol.codec import ProtocolError, decode, encode
from protocol.messages import Abort, Goodbye, RequestError, StepOutputs, WorkerStats
from router.admission import Admission
from router.errors import ApiError, worker_failed
from router.metrics import Metrics
from router.stream import RequestStream
from router.workers import WorkerSlot, WorkerState

log = logging.getLogger("gpupool.dispatch")

OUTPUT_MESSAGES = (StepOutputs, RequestError, WorkerStats, Goodbye)


class Dispatcher:
    def __init__(
        self,
        slots: list[WorkerSlot],
        admission: Admission,
        metrics: Metrics,
        max_running_per_worker: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = slots
        self.admission = admission
        self.metrics = metrics
        self.max_running_per_worker = max_running_per_worker
        self._requests_socket: zmq.asyncio.Socket | None = None  # bound when the app starts
        self._clock = clock
        self._queue: deque[RequestStream] = deque()
        self._streams: dict[str, RequestStream] = {}  # admitted and not yet ended on a worker
        self._open: set[RequestStream] = set()  # admitted and not yet released by their handler

    def attach(self, requests_socket: zmq.asyncio.Socket | None) -> None:
        self._requests_socket = requests_socket

    @property
    def in_flight(self) -> int:
        """Requests whose handler has not finished yet (the worker may be done with them already)."""
        return len(self._open)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------ requests in

    def admit(self, stream: RequestStream) -> None:
        """Queue the request and dispatch what fits; raises ApiError(503) if it would wait past --max-queue."""
        refusal = self.admission.refuse_new()
        if refusal is not None:
            raise refusal
        if stream.request_id in self._streams:
            raise ApiError(400, f"request id {stream.request_id!r} is already in flight", code="duplicate_request_id")
        self._streams[stream.request_id] = stream
        self._open.add(stream)
        self._queue.append(stream)
        self.pump()
        refusal = self.admission.refuse_waiting(len(self._queue))
        if refusal is not None and stream.worker_id is None:
            self._queue.remove(stream)
            del self._streams[stream.request_id]
            self._open.discard(stream)
            self.metrics.router_queue.set(len(self._queue))
            raise refusal

    def release(self, stream: RequestStream) -> None:
        """The handler is done with the request, however it ended. If the worker still runs it, abort it there."""
        self._open.discard(stream)
        if self._streams.pop(stream.request_id, None) is None:
            return
        if stream.worker_id is None:
            self._queue.remove(stream)
            self.metrics.router_queue.set(len(self._queue))
            return
        slot = self.slots[stream.worker_id]
        slot.outstanding.pop(stream.request_id, None)
        self.send(slot, Abort([stream.request_id]))
        self.metrics.worker_outstanding.labels(slot.label).set(len(slot.outstanding))
        self.pump()

    def pump(self) -> None:
        while self._queue:
            slot = self._least_loaded()
            if slot is None:
                break
            self._dispatch(self._queue.popleft(), slot)
        self.metrics.router_queue.set(len(self._queue))

    def _least_loaded(self) -> WorkerSlot | None:
        best, best_key = None, None
        for slot in self.slots:
            capacity = self._capacity(slot)
            if slot.state is not WorkerState.READY or len(slot.outstanding) >= capacity:
                continue
            key = (len(slot.outstanding) / capacity + slot.kv_usage, len(slot.outstanding))
            if best_key is None or key < best_key:
                best, best_key = slot, key
        return best

    def _capacity(self, slot: WorkerSlot) -> int:
        """--max-running-per-worker, or less if the worker's handshake says it runs fewer."""
        handshake = slot.handshake
        if handshake is None or handshake.max_running < 1:
            return self.max_running_per_worker
        return min(self.max_running_per_worker, handshake.max_running)

    def _dispatch(self, stream: RequestStream, slot: WorkerSlot) -> None:
        now = self._clock()
        if not slot.outstanding:
            slot.last_progress = now  # the stall clock starts when an idle worker gets work
        stream.worker_id = slot.worker_id
        if stream.dispatched_at is None:  # a re-dispatch after a worker's death is not queue time
            stream.dispatched_at = now
            self.metrics.request_queue_time.observe(now - stream.admitted_at)
        slot.outstanding[stream.request_id] = stream
        self.metrics.worker_outstanding.labels(slot.label).set(len(slot.outstanding))
        self.send(slot, stream.request)

    def send(self, slot: WorkerSlot, message: object) -> None:
        """Fire and forget: ordering per worker is kept by the socket; a failure means the worker is going away,
        which its supervisor handles."""
        if self._requests_socket is None:
            return
        future = self._requests_socket.send_multipart([slot.identity, encode(message)])
        future.add_done_callback(lambda f: self._log_send_failure(f, slot, message))

    @staticmethod
    def _log_send_failure(future, slot: WorkerSlot, message: object) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.warning("could not send %s to worker %d: %s", type(message).__name__, slot.worker_id,
                        future.exception())

    # ------------------------------------------------------------------ outputs back

    async def receive_outputs(self, outputs_socket: zmq.asyncio.Socket) -> None:
        while True:
            frame = await outputs_socket.recv(copy=True)
            try:
                message = decode(frame, expect=OUTPUT_MESSAGES)
            except ProtocolError as exc:
                self.metrics.bad_frames.inc()
                log.warning("dropped a bad frame from a worker: %s", exc)
                continue
            slot = self._live_slot(message.worker_id, message.epoch)
            if slot is None:
                self.metrics.stale_frames.inc()
                continue
            if type(message) is StepOutputs:
                self._on_step(slot, message)
            elif type(message) is WorkerStats:
                self._on_stats(slot, message)
            elif type(message) is RequestError:
                self._on_request_error(slot, message)
            else:
                slot.goodbye.set()

    def _live_slot(self, worker_id: int, epoch: int) -> WorkerSlot | None:
        if not 0 <= worker_id < len(self.slots):
            return None
        slot = self.slots[worker_id]
        return slot if slot.is_live(worker_id, epoch) else None

    def _on_step(self, slot: WorkerSlot, message: StepOutputs) -> None:
        now = self._clock()
        slot.last_heartbeat = slot.last_progress = now
        generated = 0
        finished = False
        for delta in message.deltas():
            generated += len(delta.token_ids)
            stream = slot.outstanding.get(delta.request_id)
            if stream is None:
                continue  # aborted by the router while this step ran
            if stream.first_token_at is None:
                self.metrics.time_to_first_token.observe(now - stream.admitted_at)
            elif delta.token_ids:
                self.metrics.inter_token_latency.observe((now - stream.last_token_at) / len(delta.token_ids))
            stream.push(delta, now)
            if stream.finished:
                self._end_on_worker(slot, stream)
                finished = True
        if generated:
            self.metrics.generation_tokens.inc(generated)
        if finished:
            self.pump()

    def _on_request_error(self, slot: WorkerSlot, message: RequestError) -> None:
        stream = slot.outstanding.get(message.request_id)
        if stream is None:
            return
        status = message.status if 400 <= message.status <= 599 else 500
        stream.fail(ApiError(status, message.message, code=message.code))
        self._end_on_worker(slot, stream)
        self.pump()

    def _on_stats(self, slot: WorkerSlot, stats: WorkerStats) -> None:
        now = self._clock()
        if slot.stats is None or stats.steps_done != slot.stats.steps_done:
            slot.last_progress = now
        counted = slot.stats.bad_frames if slot.stats is not None else 0  # a new epoch starts from None
        if stats.bad_frames > counted:  # frames the worker dropped count in the one bad-frames total
            self.metrics.bad_frames.inc(stats.bad_frames - counted)
        slot.last_heartbeat = now
        slot.stats = stats
        label = slot.label
        self.metrics.num_requests_running.labels(label).set(stats.running)
        self.metrics.num_requests_waiting.labels(label).set(stats.waiting)
        self.metrics.kv_cache_blocks_used.labels(label).set(stats.kv_blocks_used)
        self.metrics.kv_cache_usage_ratio.labels(label).set(slot.kv_usage)
        self.metrics.worker_steps.labels(label).set(stats.steps_done)

    def _end_on_worker(self, slot: WorkerSlot, stream: RequestStream) -> None:
        """The worker is done with the request (finished or failed): its capacity is free again."""
        slot.outstanding.pop(stream.request_id, None)
        self._streams.pop(stream.request_id, None)
        self.metrics.worker_outstanding.labels(slot.label).set(len(slot.outstanding))

    # ------------------------------------------------------------------ faults and shutdown

    def worker_lost(self, slot: WorkerSlot, reason: str) -> None:
        """Requests whose handler already took output fail now; the others, even those with output still pending
        in the router, start over from the front of the queue, in their order."""
        requeue: list[RequestStream] = []
        for stream in slot.outstanding.values():
            if stream.delivered:
                stream.fail(worker_failed(f"worker {slot.worker_id} failed mid-request ({reason}); retry the request"))
                self._streams.pop(stream.request_id, None)
            else:
                stream.restart()
                requeue.append(stream)
        slot.outstanding.clear()
        self.metrics.worker_outstanding.labels(slot.label).set(0)
        self._queue.extendleft(reversed(requeue))
        if requeue:
            log.warning("re-dispatching %d unstarted requests of worker %d", len(requeue), slot.worker_id)
        self.pump()

    def fail_all(self, error: ApiError) -> None:
        """Every request whose handler is still running ends with `error` (finished ones are left alone)."""
        for stream in list(self._open):
            stream.fail(error)
