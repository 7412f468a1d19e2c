"""Shared test helpers: a real `gpupool serve` process and condition waits with deadlines (no sleeps)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from chaos.server import Server  # noqa: E402  (scripts/ is not a package on the path by default)


class RouterProcess(Server):
    """The chaos harness's Server, failing a test (AssertionError) when the router does not start."""

    def wait_serving(self, timeout: float = 120) -> RouterProcess:
        try:
            super().wait_serving(timeout)
        except RuntimeError as exc:
            raise AssertionError(f"within {timeout} s: {exc}") from None
        return self

    def log(self) -> str:
        return "".join(self.lines[-80:])


@pytest.fixture
def start_router(tmp_path) -> Iterator[Callable[..., RouterProcess]]:
    """Start routers for one test; each is stopped (SIGTERM, then SIGKILL) afterwards."""
    started: list[RouterProcess] = []

    def start(*args: str, wait: bool = True, command: list[str] | None = None) -> RouterProcess:
        router = RouterProcess(list(args), tmp_path / f"router{len(started)}.log", command)
        started.append(router)
        return router.wait_serving() if wait else router

    yield start
    for router in started:
        router.stop()


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str,
                     interval: float = 0.05) -> None:
    """Poll an async condition until it holds, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def metric_values(text: str, name: str) -> dict[str, float]:
    """{label string: value} for one metric family in Prometheus text."""
    values = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            values[key[len(name):]] = float(value)
    return values
