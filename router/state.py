"""Everything one router app owns, under one typed AppKey."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from router.admission import Admission
from router.config import ServeConfig
from router.dispatch import Dispatcher
from router.errors import ApiError
from router.metrics import Metrics
from router.openai_schema import ModelInfo
from router.supervisor import Supervisor
from router.workers import WorkerSlot, WorkerState


@dataclass
class RouterState:
    config: ServeConfig
    metrics: Metrics
    slots: list[WorkerSlot]
    admission: Admission
    dispatcher: Dispatcher
    supervisor: Supervisor
    started_at: int = field(default_factory=lambda: int(time.time()))
    _model: ModelInfo | None = None

    @classmethod
    def build(cls, config: ServeConfig) -> RouterState:
        metrics = Metrics()
        slots = [WorkerSlot(i, device) for i, device in enumerate(config.devices)]
        for slot in slots:
            metrics.add_worker(slot.label)
        admission = Admission(config.max_queue)
        dispatcher = Dispatcher(slots, admission, metrics, config.max_running_per_worker)
        supervisor = Supervisor(config, slots, dispatcher, metrics)
        return cls(config, metrics, slots, admission, dispatcher, supervisor)

    def model_info(self) -> ModelInfo:
        """From the live workers' handshakes; the last one known while none is live."""
        handshakes = [s.handshake for s in self.slots if s.state is WorkerState.READY and s.handshake is not None]
        if handshakes:
            first = handshakes[0]
            self._model = ModelInfo(
                name=first.model_name,
                context_length=min(h.context_length for h in handshakes),
                has_chat_template=all(h.has_chat_template for h in handshakes),
            )
        if self._model is None:
            raise ApiError(503, "no worker has started yet", code="not_ready", headers={"Retry-After": "5"})
        return self._model


ROUTER = web.AppKey("gpupool_router", RouterState)
