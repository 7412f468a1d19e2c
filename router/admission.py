"""Who gets in: a bound on requests admitted but not yet running, and the draining state of a shutdown."""

from __future__ import annotations

import asyncio

from router.errors import ApiError, overloaded, shutting_down


class Admission:
    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._draining = asyncio.Event()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def start_draining(self) -> None:
        self._draining.set()

    def refuse_new(self) -> ApiError | None:
        """Checked before a request is parsed into the queue: once draining, nothing new gets in."""
        return shutting_down() if self.draining else None

    def refuse_early(self, waiting: int) -> ApiError | None:
        """Checked before the body is read: draining, or a full queue (which is not empty, so no worker has room).
        Under a burst this refuses the excess without parsing it, so refusing stays cheap when the server is busiest."""
        return self.refuse_new() or (self.refuse_waiting(waiting + 1) if waiting else None)

    def refuse_waiting(self, waiting: int) -> ApiError | None:
        """Checked after dispatch had its chance: past --max-queue the excess is told to come back later."""
        if waiting > self.max_queue:
            return overloaded(f"the server is at capacity ({self.max_queue} requests already waiting); retry later")
        return None
