"""The router's configuration: one frozen dataclass, validated once, plus the request caps it enforces."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION_BACKENDS = ("auto", "native", "compiled", "eager")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class RequestLimits:
    """Caps on one request, so no body can make the router or a worker allocate without bound."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_n: int = 16
    max_logprobs: int = 20
    max_stop_sequences: int = 16
    max_stop_chars: int = 256
    max_stop_token_ids: int = 64
    max_messages: int = 2048
    max_prompt_token_ids: int = 1_000_000
    # A prompt's text may not exceed context length x this many characters: no tokenizer packs more into a token on
    # average, and a worker's loop would stall while it tokenized megabytes (4 MiB took 7-11 s on the builtin model).
    max_prompt_chars_per_token: int = 32

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ServeConfig:
    model: str = "builtin"
    devices: tuple[str, ...] = ("cpu",)
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "auto"
    attention: str = "auto"
    served_model_name: str | None = None
    api_keys: tuple[str, ...] = ()
    max_queue: int = 1024
    max_running_per_worker: int = 256
    max_batched_tokens: int = 2048  # --max-num-batched-tokens: tokens one worker step computes
    max_prefill_tokens_while_decoding: int | None = None  # None: the worker's default (a cap on CPU, none on GPU)
    request_timeout: float = 3600.0
    first_token_timeout: float = 600.0
    shutdown_timeout: float = 30.0
    log_level: str = "info"
    worker_threads_override: int | None = None  # --worker-threads; None: each worker's fair share of the cores
    # Supervision; not in the flag table but settable for tests and slow machines.
    startup_timeout: float = 600.0
    heartbeat_timeout: float = 30.0
    stall_timeout: float = 120.0
    stats_interval: float = 0.25
    limits: RequestLimits = field(default_factory=RequestLimits)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("--model must not be empty")
        if self.model.startswith("sim:"):
            step = self.model[4:]
            try:
                if float(step) < 0:
                    raise ValueError
            except ValueError:
                raise ValueError(f"--model sim:STEP_MS needs a non-negative number, got {self.model!r}") from None
        if not self.devices:
            raise ValueError("--devices names no device")
        for device in self.devices:
            if device != "cpu" and not (device.startswith("cuda:") and device[5:].isdigit()):
                raise ValueError(f"unknown device {device!r}: use cpu or cuda:N")
        cuda = [d for d in self.devices if d != "cpu"]
        if len(set(cuda)) != len(cuda):
            raise ValueError(f"a GPU is listed twice in --devices {','.join(self.devices)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port {self.port} is out of range")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"--attention must be one of {', '.join(ATTENTION_BACKENDS)}")
        if self.served_model_name is not None and not self.served_model_name.strip():
            raise ValueError("--served-model-name must not be blank")
        if any(not key for key in self.api_keys):
            raise ValueError("--api-key must not be empty")
        if self.max_queue < 0:
            raise ValueError("--max-queue must be >= 0")
        if self.max_running_per_worker < 1:
            raise ValueError("--max-running-per-worker must be >= 1")
        if self.max_batched_tokens < 1:
            raise ValueError("--max-num-batched-tokens must be >= 1")
        if self.max_prefill_tokens_while_decoding is not None and self.max_prefill_tokens_while_decoding < 1:
            raise ValueError("--max-prefill-tokens-while-decoding must be >= 1")
        for name in ("request_timeout", "first_token_timeout", "startup_timeout", "heartbeat_timeout",
                     "stall_timeout", "stats_interval"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0")
        if self.shutdown_timeout < 0:
            raise ValueError("--shutdown-timeout must be >= 0")
        if self.worker_threads_override is not None and self.worker_threads_override < 1:
            raise ValueError("--worker-threads must be >= 1")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")

    def worker_threads(self) -> int:
        """Each CPU worker's fair share of the cores; GPU workers get the same share for their host work."""
        if self.worker_threads_override is not None:
            return self.worker_threads_override
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // len(self.devices))


def visible_gpu_count() -> int:
    """Counted without importing torch: CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L`."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def resolve_devices(spec: str) -> tuple[str, ...]:
    """`auto` -> one worker per visible GPU, else one CPU worker; otherwise a comma-separated list."""
    spec = spec.strip()
    if spec == "auto":
        count = visible_gpu_count()
        return tuple(f"cuda:{i}" for i in range(count)) if count else ("cpu",)
    return tuple(part.strip() for part in spec.split(","))
