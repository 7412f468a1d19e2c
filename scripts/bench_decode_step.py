"""Time one decode step (forward + logits + the sampler's greedy pick) of a checkpoint at a fixed batch and context,
optionally under torch.profiler: the before/after figures of the attention and linear-layer changes in
docs/benchmarks.md.

    python scripts/bench_decode_step.py --model bench-out/models/llama-97m --batch 64 --attention compiled [--profile]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gpu_worker.model import build_metadata  # noqa: E402
from gpu_worker.model_runner import TorchRunner  # noqa: E402
from gpu_worker.sampler import row_argmax  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpu_worker/builtin")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--context", type=int, default=96, help="tokens already cached per sequence")
    p.add_argument("--attention", default="auto", choices=("auto", "native", "compiled", "eager"))
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--profile", action="store_true", help="print torch.profiler's table of 5 more steps")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    runner = TorchRunner(args.model, dtype=args.dtype, num_kv_blocks=args.batch * 16 + 16, attention=args.attention)
    print(f"runner ready in {time.perf_counter() - start:.2f} s (compiled attention: {runner.decode_kernel is not None})")
    bs, ctx = runner.block_size, args.context
    per_seq = (ctx + bs) // bs + 1
    tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(args.batch)]
    slots = [t[ctx // bs] * bs + ctx % bs for t in tables]
    meta = build_metadata(slots, tables, [ctx + 1] * args.batch, [], [], [], bs, runner.device, runner.decode_kernel)
    ids = torch.randint(4, runner.model_config.vocab_size, (args.batch,))
    positions = torch.full((args.batch,), ctx)

    def step() -> None:
        row_argmax(runner.model.compute_logits(runner.model(ids, positions, meta, runner.kv_cache))).tolist()

    with torch.inference_mode():
        for _ in range(3):
            step()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        print(f"batch {args.batch}, attention {args.attention}: "
              f"{(time.perf_counter() - start) / args.steps * 1e3:.2f} ms per decode step")
        if args.profile:
            with torch.profiler.profile() as prof:
                for _ in range(5):
                    step()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
