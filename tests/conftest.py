"""Shared test helpers: a real `gpupool serve` process and condition waits with deadlines (no sleeps)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SERVING = re.compile(r"serving (\S+) on (http://[\w.:\[\]]+)")


class RouterProcess:
    """`python -m router serve ...` on a free port; its log is collected by a reader thread."""

    def __init__(self, args: list[str], log_path: Path, command: list[str] | None = None) -> None:
        self.command = (command or [sys.executable, "-m", "router", "serve"]) + ["--port", "0", *args]
        self.log_path = log_path
        self.lines: list[str] = []
        self.url: str | None = None
        self.model: str | None = None
        self._serving = threading.Event()
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(self.command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log_path, "w") as log:
            for line in self.process.stdout:
                self.lines.append(line)
                log.write(line)
                log.flush()
                match = SERVING.search(line)
                if match and self.url is None:
                    self.model, self.url = match.group(1), match.group(2)
                    self._serving.set()
        self.process.stdout.close()
        self._serving.set()  # the process ended

    def wait_serving(self, timeout: float = 120) -> RouterProcess:
        if not self._serving.wait(timeout) or self.url is None:
            self.kill()
            raise AssertionError(f"router did not start within {timeout} s:\n{self.log()}")
        return self

    def log(self) -> str:
        return "".join(self.lines[-80:])

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the router and its workers share the session
            self.process.wait(30)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.wait_exit(timeout)
        finally:
            self.kill()


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
