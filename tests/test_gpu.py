"""GPU-only checks: the same engine on cuda:0 gives the CPU's greedy tokens. Skipped without a CUDA device."""

import pytest
import torch

from gpu_worker.config import BUILTIN_MODEL_DIR
from gpu_worker.engine import Engine
from gpu_worker.model_runner import TorchRunner
from gpu_worker.scheduler import SchedulerConfig
from gpu_worker.tokenizer import Tokenizer
from protocol.messages import GenerateRequest, SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PROMPTS = ["The quick brown fox", "def main():", "Once upon a time, in a land far away", "A"]


def greedy_tokens(device: str, dtype: str) -> dict[str, list[int]]:
    runner = TorchRunner(BUILTIN_MODEL_DIR, device=device, dtype=dtype, num_kv_blocks=256)
    runner.warmup()
    engine = Engine(runner, Tokenizer.from_dir(BUILTIN_MODEL_DIR), SchedulerConfig(), 2048)
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(GenerateRequest(f"p{i}", params, prompt=prompt))
    out: dict[str, list[int]] = {}
    while engine.has_work():
        for d in engine.step():
            out.setdefault(d.request_id, []).extend(d.token_ids)
    return out


def test_cuda_float32_matches_cpu_greedy():
    assert greedy_tokens("cuda:0", "float32") == greedy_tokens("cpu", "float32")


def test_cuda_bfloat16_serves_every_request():
    out = greedy_tokens("cuda:0", "bfloat16")
    assert sorted(out) == [f"p{i}" for i in range(len(PROMPTS))]
    assert all(len(tokens) == 16 for tokens in out.values())
