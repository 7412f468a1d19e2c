"""The worker's configuration, parsed from its command line in gpu_worker/__main__.py."""

from __future__ import annotations

import os
from dataclasses import dataclass

from protocol.sockets import Addresses

BUILTIN_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "builtin")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION_BACKENDS = ("auto", "native", "compiled", "eager")  # auto: native, else compiled on CPU; eager on CUDA


@dataclass(frozen=True)
class WorkerConfig:
    addresses: Addresses
    worker_id: int = 0
    epoch: int = 0
    device: str = "cpu"
    model: str = "builtin"
    dtype: str = "auto"
    attention: str = "auto"
    served_model_name: str | None = None
    max_running: int = 256
    max_batched_tokens: int = 2048
    max_prefill_tokens_while_decoding: int | None = None  # None: timed at start-up on CPU, no cap on GPU
    block_size: int = 16
    kv_cache_mb: int | None = None
    threads: int | None = None
    tune_threads: bool = False  # threads is then the most: see thread_count.py
    stats_interval: float = 0.25

    def __post_init__(self) -> None:
        if self.worker_id < 0 or self.epoch < 0:
            raise ValueError("worker id and epoch must be >= 0")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"unknown device {self.device!r}: use cpu or cuda:N")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention {self.attention!r}: use one of {', '.join(ATTENTION_BACKENDS)}")
        for name in ("max_running", "max_batched_tokens", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_prefill_tokens_while_decoding is not None and self.max_prefill_tokens_while_decoding < 1:
            raise ValueError("max_prefill_tokens_while_decoding must be >= 1")
        if self.kv_cache_mb is not None and self.kv_cache_mb < 1:
            raise ValueError("kv_cache_mb must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be >= 1")
        if not 0.01 <= self.stats_interval <= 10:
            raise ValueError("stats_interval must be within [0.01, 10] seconds")
        self.sim_step_ms  # validates sim:MS

    @property
    def sim_step_ms(self) -> float | None:
        if not self.model.startswith("sim:"):
            return None
        try:
            step_ms = float(self.model[4:])
        except ValueError:
            raise ValueError(f"bad simulated model {self.model!r}: use sim:STEP_MS, e.g. sim:20") from None
        if step_ms < 0:
            raise ValueError("sim step time must be >= 0")
        return step_ms

    @property
    def model_dir(self) -> str:
        """The model directory to load; the built-in one for `builtin` and for `sim:` (which uses its tokenizer)."""
        if self.model == "builtin" or self.sim_step_ms is not None:
            return BUILTIN_MODEL_DIR
        return self.model

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        if self.model == "builtin":
            return "gpupool-builtin"
        if self.sim_step_ms is not None:
            return self.model
        return os.path.basename(os.path.normpath(self.model))
