"""`python -m gpu_worker`: one worker process. The router spawns it; it also runs standalone."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from gpu_worker.config import ATTENTION_BACKENDS, DTYPES, WorkerConfig
from gpu_worker.worker import report_bad_config, run_worker
from protocol.sockets import Addresses


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gpu_worker", description=__doc__)
    p.add_argument("--router", required=True, help="REQUESTS_ADDRESS,OUTPUTS_ADDRESS (ipc:// or tcp://)")
    p.add_argument("--worker-id", type=int, default=0)
    p.add_argument("--epoch", type=int, default=0, help="spawn generation; the router bumps it on each restart")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N")
    p.add_argument("--model", default="builtin", help="builtin, a local Hugging Face directory, or sim:STEP_MS")
    p.add_argument("--dtype", default="auto", choices=DTYPES)
    p.add_argument("--attention", default="auto", choices=ATTENTION_BACKENDS,
                   help="decode attention: native (C), compiled (torch.compile), eager (gather + matmul), auto")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--max-running", type=int, default=256, help="sequences decoded together")
    p.add_argument("--max-batched-tokens", type=int, default=2048, help="tokens computed per step")
    p.add_argument("--max-prefill-tokens-while-decoding", type=int, default=None,
                   help="prompt tokens in a step that also decodes (default: timed at start-up on CPU, else no cap)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV cache block")
    p.add_argument("--kv-cache-mb", type=int, default=None, help="memory for the KV cache")
    p.add_argument("--threads", type=int, default=None, help="torch threads on CPU")
    p.add_argument("--tune-threads", action="store_true",
                   help="treat --threads as the most: keep the fewest that a decode step still scales to")
    p.add_argument("--stats-interval", type=float, default=0.25, help="seconds between WorkerStats heartbeats")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig(
        addresses=Addresses.from_arg(args.router),
        worker_id=args.worker_id,
        epoch=args.epoch,
        device=args.device,
        model=args.model,
        dtype=args.dtype,
        attention=args.attention,
        served_model_name=args.served_model_name,
        max_running=args.max_running,
        max_batched_tokens=args.max_batched_tokens,
        max_prefill_tokens_while_decoding=args.max_prefill_tokens_while_decoding,
        block_size=args.block_size,
        kv_cache_mb=args.kv_cache_mb,
        threads=args.threads,
        tune_threads=args.tune_threads,
        stats_interval=args.stats_interval,
    )


# oneDNN keeps a JIT-compiled primitive per matmul shape, 1024 by default, and a served step's token count takes
# hundreds of values: a disconnect storm on the built-in model grew a worker by 14%, against 7.7% at 256. At 0 a
# step took twice as long; at 128 or 256 a steady batch kept its speed (97M, batch 64: 58.1 vs 56.7 ms).
ONEDNN_PRIMITIVE_CACHE_CAPACITY = "256"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_PRIMITIVE_CACHE_CAPACITY)  # before torch loads
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format=f"%(asctime)s worker{args.worker_id} %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = build_config(args)
    except ValueError as exc:
        return report_bad_config(args, str(exc))
    return run_worker(config)


if __name__ == "__main__":
    sys.exit(main())
