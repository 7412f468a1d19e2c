"""What the router knows about each worker slot: its live process and epoch, its handshake, its load."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from protocol.messages import Handshake, WorkerStats
from protocol.sockets import worker_identity
from router.stream import RequestStream


class WorkerState(enum.Enum):
    STARTING = "starting"  # spawned, no handshake yet
    READY = "ready"  # handshaken; takes requests
    DEAD = "dead"  # exited or killed; a restart is scheduled
    STOPPING = "stopping"  # told to shut down


@dataclass
class WorkerSlot:
    """One device's worker. A restart keeps the slot and bumps the epoch."""

    worker_id: int
    device: str
    epoch: int = -1
    state: WorkerState = WorkerState.DEAD
    process: asyncio.subprocess.Process | None = None
    handshake: Handshake | None = None
    stats: WorkerStats | None = None
    outstanding: dict[str, RequestStream] = field(default_factory=dict)
    spawned_at: float = 0.0
    ready_at: float = 0.0
    last_heartbeat: float = 0.0
    last_progress: float = 0.0  # when steps_done last advanced, or when work arrived at an idle worker
    consecutive_failures: int = 0
    goodbye: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def identity(self) -> bytes:
        return worker_identity(self.worker_id, self.epoch)

    @property
    def label(self) -> str:
        return str(self.worker_id)

    @property
    def kv_usage(self) -> float:
        if self.stats is None or self.stats.kv_blocks_total <= 0:
            return 0.0
        return self.stats.kv_blocks_used / self.stats.kv_blocks_total

    def is_live(self, worker_id: int, epoch: int) -> bool:
        """Frames from an earlier epoch of this slot, or of no slot, are dropped."""
        return worker_id == self.worker_id and epoch == self.epoch and self.state is not WorkerState.DEAD
