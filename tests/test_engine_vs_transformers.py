"""The whole engine (scheduler, chunked prefill, paged KV, sampler) against transformers' generate, one prompt at a time."""

import shutil

import pytest
import torch

from gpu_worker.config import BUILTIN_MODEL_DIR
from gpu_worker.engine import Engine
from gpu_worker.model_runner import TorchRunner
from gpu_worker.scheduler import SchedulerConfig
from gpu_worker.tokenizer import Tokenizer
from protocol.messages import GenerateRequest, SamplingParams

transformers = pytest.importorskip("transformers")

SIZES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=512, max_position_embeddings=512, initializer_range=0.2, bos_token_id=0, eos_token_id=1)
PROMPTS = [[0, 7], [0, 5, 9, 200, 3], list(range(10, 43)), [42] * 6 + list(range(100, 160)), [0, 3, 4],
           list(range(450, 300, -3)), [9, 8, 7, 6, 5, 4, 3, 2], [128] * 17, list(range(60, 80)) * 3]
NEW_TOKENS = 12


@pytest.mark.parametrize("config_class", [transformers.LlamaConfig, transformers.Qwen2Config], ids=["llama", "qwen2"])
def test_engine_greedy_tokens_equal_transformers_generate(tmp_path, config_class):
    torch.manual_seed(0)
    reference = transformers.AutoModelForCausalLM.from_config(config_class(**SIZES)).eval()
    reference.save_pretrained(tmp_path, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{BUILTIN_MODEL_DIR}/{name}", tmp_path)
    expected = {}
    for i, prompt in enumerate(PROMPTS):
        ids = torch.tensor([prompt])
        out = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                 min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
        expected[f"p{i}"] = out[0, len(prompt):].tolist()

    runner = TorchRunner(tmp_path, dtype="float32", block_size=4, num_kv_blocks=512, threads=1)
    # A small token budget makes long prompts prefill in chunks beside the decodes of short ones.
    engine = Engine(runner, Tokenizer.from_dir(tmp_path), SchedulerConfig(max_batched_tokens=24), 512)
    greedy = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(PROMPTS):
        assert engine.add_request(GenerateRequest(f"p{i}", greedy, prompt_token_ids=prompt)) is None
    got: dict[str, list[int]] = {}
    mixed_steps = 0
    while engine.has_work():
        running_before = len(engine.scheduler.running)
        deltas = engine.step()
        mixed_steps += bool(running_before and engine.scheduler.waiting)
        for d in deltas:
            got.setdefault(d.request_id, []).extend(d.token_ids)
    assert mixed_steps > 0
    assert got == expected
