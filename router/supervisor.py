"""Worker processes: spawn, handshake, watch (process, heartbeat, progress), restart with backoff, stop.

A death is handled in one place, `_on_exit`, when the process is reaped; the watchdog only kills. Each spawn gets a
new epoch, so whatever the dead worker still had in flight is dropped when it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import zmq.asyncio

from protocol.codec import ProtocolError, decode
from protocol.messages import Handshake, Shutdown, StartupFailed
from protocol.sockets import Addresses
from router.config import ServeConfig
from router.dispatch import Dispatcher
from router.metrics import Metrics
from router.worker_process import spawn_worker
from router.workers import WorkerSlot, WorkerState

log = logging.getLogger("gpupool.supervisor")

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a worker that ran this long before dying starts its backoff afresh
GOODBYE_TIMEOUT_S = 10.0
EXIT_TIMEOUT_S = 5.0


class StartupError(RuntimeError):
    """A worker could not start; the message is the worker's own."""


class Supervisor:
    def __init__(self, config: ServeConfig, slots: list[WorkerSlot], dispatcher: Dispatcher, metrics: Metrics) -> None:
        self.config = config
        self.slots = slots
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.addresses = Addresses("inproc://unset", "inproc://unset")  # set by start_all
        self._initial = True  # failures during the first start are fatal, later ones are restarted
        self._stopping = False
        self._changed = asyncio.Event()
        self._startup_errors: list[str] = []
        self._tasks: set[asyncio.Task] = set()
        self._fail_reasons: dict[int, str] = {}

    @property
    def ready_slots(self) -> list[WorkerSlot]:
        return [s for s in self.slots if s.state is WorkerState.READY]

    # ------------------------------------------------------------------ start

    async def start_all(self, addresses: Addresses) -> None:
        """Spawn every worker and wait for all handshakes; raises StartupError with the first worker's message."""
        self.addresses = addresses
        for slot in self.slots:
            await self._spawn(slot)
        deadline = time.monotonic() + self.config.startup_timeout
        while not all(s.state is WorkerState.READY for s in self.slots):
            if self._startup_errors:
                raise StartupError(self._startup_errors[0])
            self._changed.clear()
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    await self._changed.wait()
            except TimeoutError:
                raise StartupError(f"no handshake from the workers within {self.config.startup_timeout:g} s") from None
        self._initial = False

    async def _spawn(self, slot: WorkerSlot) -> None:
        slot.epoch += 1
        slot.state = WorkerState.STARTING
        slot.handshake = slot.stats = None
        slot.goodbye = asyncio.Event()
        slot.spawned_at = time.monotonic()
        slot.process = await spawn_worker(self.config, self.addresses, slot.worker_id, slot.epoch, slot.device)
        log.info("worker %d (%s) spawned: pid %d, epoch %d", slot.worker_id, slot.device, slot.process.pid, slot.epoch)
        self._track(self._reap(slot, slot.epoch, slot.process))

    def _track(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ handshakes (the ROUTER socket)

    async def receive_handshakes(self, requests_socket: zmq.asyncio.Socket) -> None:
        while True:
            frames = await requests_socket.recv_multipart()
            try:
                if len(frames) != 2:
                    raise ProtocolError(f"expected [identity, frame], got {len(frames)} parts")
                message = decode(frames[1], expect=(Handshake, StartupFailed))
            except ProtocolError as exc:
                self.metrics.bad_frames.inc()
                log.warning("dropped a bad frame on the request socket: %s", exc)
                continue
            slot = self._starting_slot(message.worker_id, message.epoch, frames[0])
            if slot is None:
                self.metrics.stale_frames.inc()
            elif type(message) is Handshake:
                self._on_handshake(slot, message)
            else:
                log.error("worker %d (%s) failed to start: %s", slot.worker_id, slot.device, message.message)
                self._fail_reasons[slot.worker_id] = message.message

    def _starting_slot(self, worker_id: int, epoch: int, identity: bytes) -> WorkerSlot | None:
        if not 0 <= worker_id < len(self.slots):
            return None
        slot = self.slots[worker_id]
        ok = slot.epoch == epoch and slot.state is WorkerState.STARTING and identity == slot.identity
        return slot if ok else None

    def _on_handshake(self, slot: WorkerSlot, handshake: Handshake) -> None:
        now = time.monotonic()
        slot.handshake = handshake
        slot.state = WorkerState.READY
        slot.ready_at = slot.last_heartbeat = slot.last_progress = now
        self.metrics.worker_up.labels(slot.label).set(1)
        log.info("worker %d ready: %s on %s, context %d, KV %d tokens, pid %d", slot.worker_id, handshake.model_name,
                 handshake.device, handshake.context_length, handshake.kv_capacity_tokens, handshake.pid)
        self._changed.set()
        self.dispatcher.pump()

    # ------------------------------------------------------------------ deaths and restarts

    async def _reap(self, slot: WorkerSlot, epoch: int, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if slot.epoch != epoch or slot.state is WorkerState.STOPPING:
            return  # a stop in progress reaps it
        reason = self._fail_reasons.pop(slot.worker_id, None) or f"exited with code {code}"
        self._on_exit(slot, reason)

    def _on_exit(self, slot: WorkerSlot, reason: str) -> None:
        now = time.monotonic()
        was_ready = slot.state is WorkerState.READY
        slot.state = WorkerState.DEAD
        self._reset_gauges(slot)
        self.dispatcher.worker_lost(slot, reason)
        if self._initial and not was_ready:
            self._startup_errors.append(f"worker {slot.worker_id} ({slot.device}) failed to start: {reason}")
            self._changed.set()
            return
        if self._stopping:
            return
        if was_ready and now - slot.ready_at > STABLE_AFTER_S:
            slot.consecutive_failures = 0
        slot.consecutive_failures += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (slot.consecutive_failures - 1))
        log.error("worker %d (%s) died: %s; restarting in %.1f s", slot.worker_id, slot.device, reason, delay)
        self._track(self._restart(slot, delay))

    async def _restart(self, slot: WorkerSlot, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._stopping:
            return
        self.metrics.worker_restarts.inc()
        await self._spawn(slot)

    def _reset_gauges(self, slot: WorkerSlot) -> None:
        m, label = self.metrics, slot.label
        for gauge in (m.worker_up, m.num_requests_running, m.num_requests_waiting, m.kv_cache_usage_ratio,
                      m.kv_cache_blocks_used):
            gauge.labels(label).set(0)

    def kill(self, slot: WorkerSlot, reason: str, kind: str) -> None:
        """Watchdog verdict: the process is killed, and `_reap` then handles the death."""
        if slot.process is None or slot.process.returncode is not None:
            return
        log.error("killing worker %d (pid %d): %s", slot.worker_id, slot.process.pid, reason)
        self.metrics.worker_failures.labels(kind).inc()
        self._fail_reasons[slot.worker_id] = reason
        with contextlib.suppress(ProcessLookupError):
            slot.process.kill()

    async def watch(self, interval: float = 0.25) -> None:
        """Heartbeat, progress and startup deadlines of every worker."""
        c = self.config
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for slot in self.slots:
                if slot.state is WorkerState.STARTING and now - slot.spawned_at > c.startup_timeout:
                    self.kill(slot, f"no handshake within {c.startup_timeout:g} s", "startup_timeout")
                elif slot.state is not WorkerState.READY:
                    continue
                elif now - slot.last_heartbeat > c.heartbeat_timeout:
                    self.kill(slot, f"no heartbeat for {c.heartbeat_timeout:g} s", "heartbeat")
                elif slot.outstanding and now - slot.last_progress > c.stall_timeout:
                    self.kill(slot, f"no progress for {c.stall_timeout:g} s with work to do", "stalled")

    # ------------------------------------------------------------------ shutdown

    async def stop_all(self) -> None:
        """Shutdown -> Goodbye (with a deadline) -> reap; a worker that does not comply is killed."""
        self._stopping = True
        live = [s for s in self.slots if s.process is not None and s.process.returncode is None]
        for slot in live:
            if slot.state is WorkerState.READY:
                self.dispatcher.send(slot, Shutdown())
            elif slot.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.terminate()
            slot.state = WorkerState.STOPPING
        await asyncio.gather(*(self._goodbye_then_reap(slot) for slot in live))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _goodbye_then_reap(self, slot: WorkerSlot) -> None:
        process = slot.process
        if slot.handshake is not None:
            goodbye = asyncio.ensure_future(slot.goodbye.wait())
            exited = asyncio.ensure_future(process.wait())
            await asyncio.wait([goodbye, exited], timeout=GOODBYE_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
            goodbye.cancel()
            exited.cancel()
            if not slot.goodbye.is_set():
                log.warning("worker %d sent no Goodbye", slot.worker_id)
        try:
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await process.wait()
        except TimeoutError:
            log.warning("worker %d did not exit after Shutdown; killing it", slot.worker_id)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        slot.state = WorkerState.DEAD
        self._reset_gauges(slot)
