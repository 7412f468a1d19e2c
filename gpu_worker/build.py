"""Load the tokenizer and the model (or the simulated one) and put an Engine around them."""

from __future__ import annotations

from dataclasses import dataclass

from gpu_worker.config import WorkerConfig
from gpu_worker.engine import Engine
from gpu_worker.scheduler import SchedulerConfig
from gpu_worker.sim_runner import SIM_CONTEXT_LENGTH, SimRunner
from gpu_worker.tokenizer import Tokenizer


@dataclass(frozen=True)
class BuiltEngine:
    engine: Engine
    device: str
    context_length: int
    kv_capacity_tokens: int
    has_chat_template: bool


def build_engine(config: WorkerConfig) -> BuiltEngine:
    tokenizer = Tokenizer.from_dir(config.model_dir)
    sim_step_ms = config.sim_step_ms
    prefill_cap = config.max_prefill_tokens_while_decoding
    if sim_step_ms is not None:
        runner = SimRunner(sim_step_ms, tokenizer.vocab_size, block_size=config.block_size)
        max_positions = SIM_CONTEXT_LENGTH
        device = f"sim ({sim_step_ms:g} ms/step)"
    else:
        from gpu_worker.calibration import choose_prefill_cap, choose_small_linears, tune_threads  # torch: real models
        from gpu_worker.model_runner import TorchRunner

        runner = TorchRunner(
            config.model_dir,
            device=config.device,
            dtype=config.dtype,
            block_size=config.block_size,
            max_batched_tokens=config.max_batched_tokens,
            max_running=config.max_running,
            kv_cache_mb=config.kv_cache_mb,
            threads=config.threads,
            attention=config.attention,
        )
        if config.tune_threads:
            tune_threads(runner, config.threads)
        choose_small_linears(runner)
        runner.warmup()
        if prefill_cap is None and runner.device.type == "cpu":
            prefill_cap = choose_prefill_cap(runner, config.max_batched_tokens)
        max_positions = runner.context_length
        device = config.device
    kv_capacity = runner.num_kv_blocks * runner.block_size
    scheduler_config = SchedulerConfig(config.max_running, max(config.max_batched_tokens, config.max_running),
                                       prefill_cap)
    engine = Engine(runner, tokenizer, scheduler_config, max_positions)
    return BuiltEngine(engine, device, engine.context_length, kv_capacity, tokenizer.has_chat_template)
