"""Start a server for a benchmark on a free local port, wait until it answers, and stop it with its children.

Every server runs in its own session, so that stopping it (SIGTERM, then SIGKILL after a grace period) reaches the
processes it spawned (gpupool's workers, vLLM's engine) and nothing else. Its output goes to a log file whose tail
is shown when it fails to start.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
BASELINES = Path(__file__).resolve().parent
SERVED_NAME = "bench"


@dataclass(frozen=True)
class ServerSpec:
    name: str
    argv: list[str]  # "{port}" is replaced by the port
    ready_path: str = "/health"
    model: str = SERVED_NAME  # the name requests must carry
    flavour: str = "openai"  # see bench.py --flavour
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 300.0


def gpupool(model: str, devices: str = "cpu", dtype: str | None = None, extra: list[str] | None = None) -> ServerSpec:
    argv = [sys.executable, "-m", "router", "serve", "--model", model, "--devices", devices, "--host", "127.0.0.1",
            "--port", "{port}", "--served-model-name", SERVED_NAME, "--log-level", "warning"]
    if dtype is not None and not model.startswith("sim:"):
        argv += ["--dtype", dtype]
    return ServerSpec("gpupool", argv + list(extra or []), "/ready")


def seeds(model_dir: str, dtype: str, replicas: int, threads: int | None) -> ServerSpec:
    argv = [sys.executable, str(BASELINES / "seeds_server.py"), "--model", model_dir, "--port", "{port}",
            "--dtype", dtype, "--replicas", str(replicas)]
    if threads is not None:
        argv += ["--threads", str(threads)]
    return ServerSpec("seeds", argv)


def transformers_serve(model_dir: str, dtype: str, threads: int | None = None) -> ServerSpec:
    """`transformers serve --continuous-batching`, offline; it only serves requests that name the model by its path."""
    argv = [sys.executable, "-m", "transformers.cli.transformers", "serve", "--continuous-batching",
            "--device", "cpu", "--dtype", dtype, "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning",
            model_dir]
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op pool; the CLI has no flag for it
    return ServerSpec("transformers", argv, model=model_dir, flavour="transformers", env=env)


def vllm(venv: str, model_dir: str, dtype: str, extra: list[str] | None = None) -> ServerSpec:
    """vLLM's OpenAI server from its own venv. On CPU, --gpu-memory-utilization is the share of RAM it reserves
    (KV cache included) and it refuses to start when that much is not free: VLLM_DEFAULT_ARGS sets a modest one."""
    argv = [os.path.join(venv, "bin", "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
            "--dtype", dtype, "--host", "127.0.0.1", "--port", "{port}", "--served-model-name", SERVED_NAME]
    return ServerSpec("vllm", argv + list(extra or []), env={"HF_HUB_OFFLINE": "1"}, startup_timeout=600.0)


VLLM_DEFAULT_ARGS = "--gpu-memory-utilization 0.2"


def bare_sse() -> ServerSpec:
    return ServerSpec("bare-sse", [sys.executable, str(BASELINES / "bare_sse.py"), "--port", "{port}",
                                   "--served-model-name", SERVED_NAME])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StartupFailed(RuntimeError):
    pass


class RunningServer:
    def __init__(self, spec: ServerSpec, log_path: Path) -> None:
        self.spec = spec
        self.ready_s: float | None = None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [a.replace("{port}", str(self.port)) for a in spec.argv]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "PYTHONUNBUFFERED": "1", **spec.env}
        with open(log_path, "w") as log:
            log.write(" ".join(argv) + "\n")
            log.flush()
            self.process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        return "".join(self.log_path.read_text(errors="replace").splitlines(keepends=True)[-lines:])

    async def wait_ready(self) -> float:
        """Seconds until the ready path answered 200; StartupFailed if the process ended or the deadline passed."""
        start = time.monotonic()
        deadline = start + self.spec.startup_timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise StartupFailed(f"{self.spec.name} exited with {self.process.returncode} before it was "
                                        f"ready; its log ({self.log_path}) ends:\n{self.log_tail()}")
                try:
                    async with session.get(self.url + self.spec.ready_path) as resp:
                        if resp.status == 200:
                            return time.monotonic() - start
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(0.25)
        self.stop()
        raise StartupFailed(f"{self.spec.name} was not ready within {self.spec.startup_timeout:.0f} s; its log "
                            f"({self.log_path}) ends:\n{self.log_tail()}")

    def stop(self, grace: float = 30.0) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever the leader left behind in its session
        except ProcessLookupError:
            pass
        self.process.wait(grace)


class launched:
    """`async with launched(spec, log) as server:` a ready server, stopped on the way out whatever happens."""

    def __init__(self, spec: ServerSpec, log_path: Path) -> None:
        self.spec, self.log_path = spec, log_path
        self.server: RunningServer | None = None

    async def __aenter__(self) -> RunningServer:
        self.server = RunningServer(self.spec, self.log_path)
        try:
            self.server.ready_s = await self.server.wait_ready()
        except BaseException:
            self.server.stop()
            raise
        return self.server

    async def __aexit__(self, *exc) -> None:
        self.server.stop()
