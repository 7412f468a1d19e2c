"""A real `gpupool serve` for the harness, and what the harness reads from it: /ready, /metrics and RSS."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
SERVING = re.compile(r"serving (\S+) on (http://[\w.:\[\]]+)")


class Server:
    """`python -m router serve --port 0 ...` (or another serve `command`), its log collected by a reader thread.

    tests/conftest.py's RouterProcess is this class with test-flavoured failures.
    """

    def __init__(self, args: list[str], log_path: Path, command: list[str] | None = None) -> None:
        base = command or [sys.executable, "-m", "router", "serve"]
        self.command = [*base, "--host", "127.0.0.1", "--port", "0", *args]
        self.lines: list[str] = []
        self.url: str | None = None
        self.model: str | None = None
        self._serving = threading.Event()
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(self.command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, args=(log_path,), daemon=True)
        self._reader.start()

    def _read(self, log_path: Path) -> None:
        with open(log_path, "w") as log:
            for line in self.process.stdout:
                self.lines.append(line)
                log.write(line)
                log.flush()
                match = SERVING.search(line)
                if match and self.url is None:
                    self.model, self.url = match.group(1), match.group(2)
                    self._serving.set()
        self.process.stdout.close()
        self._serving.set()

    def wait_serving(self, timeout: float = 180) -> Server:
        if not self._serving.wait(timeout) or self.url is None:
            self.kill()
            raise RuntimeError("gpupool serve did not start:\n" + "".join(self.lines[-40:]))
        return self

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def stop(self, timeout: float = 60) -> int | None:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.wait_exit(timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.kill()


class Launcher:
    """`start(*args)` for the scenarios; `close()` stops whatever was started."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Server] = []

    def __call__(self, *args: str) -> Server:
        server = Server(list(args), self.log_dir / f"server{len(self.started)}.log")
        self.started.append(server)
        return server.wait_serving()

    def close(self) -> None:
        for server in self.started:
            server.stop()


def rss_mb(pid: int) -> float:
    """Resident set size from /proc (Linux); nan once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return float("nan")


async def workers(session: aiohttp.ClientSession, url: str) -> list[dict]:
    async with session.get(url + "/ready") as response:
        return (await response.json())["workers"]


async def context_length(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url + "/v1/models") as response:
        return (await response.json())["data"][0]["max_model_len"]


async def metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """{'family{labels}': value} for every sample in /metrics."""
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def family(samples: dict[str, float], name: str) -> float:
    """The sum of one family's samples (over all label values)."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


async def pool_idle(session: aiohttp.ClientSession, url: str) -> bool:
    """Nothing running, waiting, outstanding or holding KV on any worker, and nothing queued in the router."""
    samples = await metrics(session, url)
    return all(family(samples, f) == 0 for f in (
        "gpupool_num_requests_running", "gpupool_num_requests_waiting", "gpupool_kv_cache_blocks_used",
        "gpupool_worker_outstanding_requests", "gpupool_router_queue_length"))


def process_rss(server, pids: list[int]) -> dict[str, float]:
    rss = {"router": rss_mb(server.process.pid)}
    for i, pid in enumerate(pids):
        rss[f"worker{i}"] = rss_mb(pid)
    return rss
