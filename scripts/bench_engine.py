"""Engine benchmark: decode tokens/s of the engine vs the bare model forward vs transformers' generate.

    python scripts/bench_engine.py --models builtin,llama-97m --batches 1,8,32,64 --out bench-out/engine.json

The gap between the engine and the bare forward is the scheduler + sampler + detokenizer overhead. All three run in
one process, on the same weights, with the same torch thread count, one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpu_worker.batch import ScheduledChunk  # noqa: E402
from gpu_worker.config import BUILTIN_MODEL_DIR  # noqa: E402
from gpu_worker.engine import Engine  # noqa: E402
from gpu_worker.model_runner import TorchRunner  # noqa: E402
from gpu_worker.scheduler import SchedulerConfig  # noqa: E402
from gpu_worker.tokenizer import Tokenizer  # noqa: E402
from protocol.messages import GenerateRequest, SamplingParams  # noqa: E402

PROMPT_LEN = 64
LLAMA_97M = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                 intermediate_size=2048, vocab_size=8000, max_position_embeddings=2048)


def make_97m_model(out_dir: str) -> str:
    """A random 97M-parameter Llama (the config of the issue's vLLM reference) with the built-in tokenizer."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA_97M, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False))
    model.to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(BUILTIN_MODEL_DIR, name), out_dir)
    return out_dir


def engine_decode(model_dir: str, dtype: str, batch: int, steps: int, device: str = "cpu") -> float:
    """Seconds per decode step of the whole engine (schedule, forward, sample, detokenize, deltas)."""
    runner = TorchRunner(model_dir, device=device, dtype=dtype, num_kv_blocks=batch * 16 + 16)
    engine = Engine(runner, Tokenizer.from_dir(model_dir), SchedulerConfig(max_running=batch), 2048)
    gen = torch.Generator().manual_seed(batch)
    for i in range(batch):
        prompt = torch.randint(4, 8000, (PROMPT_LEN,), generator=gen).tolist()
        params = SamplingParams(max_tokens=steps + 8, temperature=0.0, ignore_eos=True)
        engine.add_request(GenerateRequest(f"r{i}", params, prompt_token_ids=prompt))
    while any(s.num_output_tokens == 0 for seqs in engine.requests.values() for s in seqs):
        engine.step()
    engine.step()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    return (time.perf_counter() - start) / steps


def bare_forward(model_dir: str, dtype: str, batch: int, steps: int, device: str = "cpu") -> float:
    """Seconds per decode step of model forward + logits alone, with the step's inputs built in advance."""
    from gpu_worker.model import build_metadata

    runner = TorchRunner(model_dir, device=device, dtype=dtype, num_kv_blocks=batch * 16 + 16)
    bs = runner.block_size
    blocks_per_seq = (PROMPT_LEN + bs) // bs + 1
    tables = [list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)) for i in range(batch)]
    pos = PROMPT_LEN
    slots = [t[pos // bs] * bs + pos % bs for t in tables]
    meta = build_metadata(slots, tables, [pos + 1] * batch, [], [], [], bs, runner.device, runner.decode_kernel)
    ids = torch.randint(4, 8000, (batch,)).to(runner.device)
    positions = torch.full((batch,), pos).to(runner.device)
    with torch.inference_mode():
        for _ in range(3):
            runner.model.compute_logits(runner.model(ids, positions, meta, runner.kv_cache))
        start = time.perf_counter()
        for _ in range(steps):
            logits = runner.model.compute_logits(runner.model(ids, positions, meta, runner.kv_cache))
            logits.argmax(-1).tolist()
    return (time.perf_counter() - start) / steps


def hf_generate(model_dir: str, dtype: str, batch: int, steps: int, device: str = "cpu") -> float:
    """Seconds per generated token step of transformers' generate (prefill amortised over the steps)."""
    from transformers import AutoModelForCausalLM

    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).eval().to(device)
    ids = torch.randint(4, 8000, (batch, PROMPT_LEN), generator=torch.Generator().manual_seed(batch)).to(device)
    kwargs = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=1,
                  attention_mask=torch.ones_like(ids))
    with torch.inference_mode():
        model.generate(ids, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})
        start = time.perf_counter()
        model.generate(ids, **kwargs).tolist()  # .tolist() waits for the device
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="builtin,llama-97m")
    p.add_argument("--batches", default="1,8,32,64")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--skip-hf", action="store_true", help="leave out transformers' generate")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N")
    p.add_argument("--out", default="bench-out/engine.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model_dir = BUILTIN_MODEL_DIR if name == "builtin" else make_97m_model(tmp) if name == "llama-97m" else name
            for batch in map(int, args.batches.split(",")):
                row = {"model": name, "batch": batch, "dtype": args.dtype, "device": args.device}
                row["engine_ms"] = engine_decode(model_dir, args.dtype, batch, args.steps, args.device) * 1e3
                row["forward_ms"] = bare_forward(model_dir, args.dtype, batch, args.steps, args.device) * 1e3
                if not args.skip_hf:
                    row["hf_ms"] = hf_generate(model_dir, args.dtype, batch, args.steps, args.device) * 1e3
                row["engine_tok_s"] = batch / row["engine_ms"] * 1e3
                row["overhead_pct"] = (row["engine_ms"] / row["forward_ms"] - 1) * 100
                rows.append(row)
                print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"threads": args.threads, "prompt_len": PROMPT_LEN, "rows": rows}, f, indent=1)
    print("\n| model | batch | engine ms/step | engine tok/s | bare forward ms | overhead | HF generate ms/step |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        hf = f"{r['hf_ms']:.2f}" if "hf_ms" in r else "-"
        print(f"| {r['model']} | {r['batch']} | {r['engine_ms']:.2f} | {r['engine_tok_s']:.0f} | {r['forward_ms']:.2f} "
              f"| {r['overhead_pct']:+.0f}% | {hf} |")


if __name__ == "__main__":
    main()
