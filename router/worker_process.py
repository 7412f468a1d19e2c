"""Starting one `python -m gpu_worker` process: its command line, environment and process attributes."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
from pathlib import Path

from protocol.sockets import Addresses
from router.config import ServeConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def worker_command(config: ServeConfig, addresses: Addresses, worker_id: int, epoch: int, device: str) -> list[str]:
    command = [
        sys.executable, "-m", "gpu_worker", "--router", addresses.as_arg(),
        "--worker-id", str(worker_id), "--epoch", str(epoch), "--device", device,
        "--model", config.model, "--dtype", config.dtype, "--attention", config.attention,
        "--max-running", str(config.max_running_per_worker), "--max-batched-tokens", str(config.max_batched_tokens),
        "--threads", str(config.worker_threads()), "--stats-interval", str(config.stats_interval),
        "--log-level", config.log_level,
    ]
    if config.worker_threads_override is None:
        command.append("--tune-threads")  # the fair share is then the most; the worker keeps what its model uses
    if config.max_prefill_tokens_while_decoding is not None:
        command += ["--max-prefill-tokens-while-decoding", str(config.max_prefill_tokens_while_decoding)]
    if config.served_model_name is not None:
        command += ["--served-model-name", config.served_model_name]
    return command


async def spawn_worker(config: ServeConfig, addresses: Addresses, worker_id: int, epoch: int,
                       device: str) -> asyncio.subprocess.Process:
    """The worker shares the router's stdout and stderr, so its own messages reach the user."""
    return await asyncio.create_subprocess_exec(
        *worker_command(config, addresses, worker_id, epoch, device),
        stdin=asyncio.subprocess.DEVNULL,
        env=_environment(),
        start_new_session=True,  # a Ctrl-C in the terminal reaches the router only, which stops the workers in order
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    if (PROJECT_ROOT / "gpu_worker").is_dir():  # running from a checkout rather than an install
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    return env


def _die_with_parent() -> None:
    """In the child before exec: a worker must not outlive a router killed with SIGKILL."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
