"""Time TorchRunner decode steps (forward + logits + greedy sampling) at several batch sizes and dtypes.

    python scripts/bench_forward.py [--device cpu] [--threads 1] [--context 128] [--batches 1,8,32,64]

Builds a random Llama checkpoint (default: hidden 256, 4 layers, 4 heads, intermediate 688, vocab 8000) in a
temporary directory, prefills every sequence to --context tokens, then times decode steps.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from gpu_worker.batch import ScheduledChunk
from gpu_worker.model_runner import TorchRunner, resolve_dtype
from gpu_worker.model import ModelConfig
from protocol.messages import SamplingParams


def write_checkpoint(path: Path, hidden: int, layers: int, heads: int, kv_heads: int, inter: int, vocab: int) -> None:
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": hidden, "num_hidden_layers": layers,
              "num_attention_heads": heads, "num_key_value_heads": kv_heads, "intermediate_size": inter,
              "vocab_size": vocab, "max_position_embeddings": 4096, "eos_token_id": 2, "bos_token_id": 1}
    (path / "config.json").write_text(json.dumps(config))
    head_dim = hidden // heads
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.05

    tensors = {"model.embed_tokens.weight": rand(vocab, hidden), "model.norm.weight": torch.ones(hidden),
               "lm_head.weight": rand(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors |= {p + "self_attn.q_proj.weight": rand(heads * head_dim, hidden),
                    p + "self_attn.k_proj.weight": rand(kv_heads * head_dim, hidden),
                    p + "self_attn.v_proj.weight": rand(kv_heads * head_dim, hidden),
                    p + "self_attn.o_proj.weight": rand(hidden, heads * head_dim),
                    p + "mlp.gate_proj.weight": rand(inter, hidden), p + "mlp.up_proj.weight": rand(inter, hidden),
                    p + "mlp.down_proj.weight": rand(hidden, inter),
                    p + "input_layernorm.weight": torch.ones(hidden),
                    p + "post_attention_layernorm.weight": torch.ones(hidden)}
    save_file(tensors, path / "model.safetensors")


def time_decode(runner: TorchRunner, batch: int, context: int, steps: int, rounds: int = 5) -> float:
    """The fastest of `rounds` timings of `steps` decode steps (the least disturbed by other processes)."""
    bs = runner.block_size
    per_seq = -(-(context + steps + 1) // bs)
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(batch)]
    greedy = SamplingParams(temperature=0.0)
    prompt = [5] * context
    for i in range(0, batch, 8):  # prefill in groups, as a scheduler under a token budget would
        runner.run([ScheduledChunk(j, prompt, 0, tables[j], True, greedy) for j in range(i, min(batch, i + 8))])
    pos = context
    chunks = [ScheduledChunk(j, [7], pos, tables[j], True, greedy) for j in range(batch)]
    runner.run(chunks)
    if runner.device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for step in range(steps):  # the same positions each round: the cache holds the same context
            pos = context + 1 + step
            runner.run([ScheduledChunk(j, [7], pos, tables[j], True, greedy) for j in range(batch)])
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--shape", default="256,4,4,4,688,8000", help="hidden,layers,heads,kv_heads,inter,vocab")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(Path(tmp), *(int(x) for x in args.shape.split(",")))
        config = ModelConfig.from_dir(tmp)
        start = time.perf_counter()
        auto = resolve_dtype("auto", torch.device(args.device), config)
        print(f"device={args.device} threads={args.threads} context={args.context} shape={args.shape}")
        print(f"dtype auto -> {auto} (probe {1e3 * (time.perf_counter() - start):.0f} ms)")
        for dtype in args.dtypes.split(","):
            blocks = max(batches) * -(-(args.context + args.steps + 2) // 16)
            runner = TorchRunner(tmp, args.device, dtype, 16, 2048, max(batches), num_kv_blocks=blocks)
            runner.warmup()
            for batch in batches:
                step = time_decode(runner, batch, args.context, args.steps)
                print(f"{dtype:9s} decode batch {batch:3d}: {1e3 * step:7.2f} ms/step  "
                      f"{batch / step:8.0f} tok/s")


if __name__ == "__main__":
    main()
