"""gpupool side by side with its baselines, one command per comparison; each prints tables and writes JSON + PNG.

    python scripts/compare.py baselines   # gpupool vs the seeds' design, transformers serve, vLLM (when installed)
    python scripts/compare.py ceiling     # the router with --model sim:0 vs a bare aiohttp SSE server, 64 streams
    python scripts/compare.py scaling     # --model sim:20 with 1, 2, 4, 8 workers

Servers run one at a time on free local ports, each stopped (with its children) before the next starts, all measured
by the same client (scripts/bench.py) in this process. `--quick` shrinks every comparison to a smoke run of seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import servers  # noqa: E402
from benchkit import event_loop  # noqa: E402
from benchkit.baselines import GOALS, baseline_specs, baselines_summary, goal_met, run_baselines  # noqa: E402,F401
from benchkit.ceiling import ceiling_summary, run_ceiling  # noqa: E402,F401
from benchkit.common import MODELS_97M, at, machine, measure, model_dir, ms, ratio  # noqa: E402,F401
from benchkit.plots import plot_scaling  # noqa: E402,F401
from benchkit.report import write_json  # noqa: E402
from benchkit.scaling import run_scaling, scaling_summary  # noqa: E402,F401


QUICK = {  # --quick: a smoke run of each comparison, seconds not minutes
    "baselines": dict(concurrency="1,4", num_requests=8, output_len=16, warmup=2),
    "ceiling": dict(duration=2.0, output_len=128, warmup=4),
    "scaling": dict(workers="1,2", waves=1, warmup=2, output_len=16),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out-dir", default="bench-out", help="JSON and PNG go here")
    common.add_argument("--log-dir", default="bench-out/logs", help="one log per server started")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--warmup", type=int, default=8, help="requests per server before measuring")
    common.add_argument("--num-requests", type=int, help="per level (default: see each comparison)")
    common.add_argument("--duration", type=float, help="per level: launch requests for this many seconds instead")
    common.add_argument("--gpupool-args", default="", help="extra `gpupool serve` flags, one shell string")
    common.add_argument("--no-progress", action="store_true")
    common.add_argument("--quick", action="store_true", help="a smoke run of seconds (overrides sizes)")
    sub = p.add_subparsers(dest="comparison", required=True)

    b = sub.add_parser("baselines", parents=[common], help="gpupool vs seeds / transformers serve / vLLM")
    b.add_argument("--models", default=f"builtin,{MODELS_97M}", help=f"builtin, {MODELS_97M} or model dirs")
    b.add_argument("--servers", default="gpupool,seeds,transformers,vllm")
    b.add_argument("--concurrency", default="1,8,32,64")
    b.add_argument("--input-len", type=int, default=64)
    b.add_argument("--output-len", type=int, default=64)
    b.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="for every server")
    b.add_argument("--devices", default="cpu", help="gpupool's --devices")
    b.add_argument("--seeds-replicas", type=int, default=1)
    b.add_argument("--threads", type=int, help="torch threads of seeds (default: CPUs / replicas) and transformers "
                   "serve (default: torch's); gpupool's workers take CPUs / workers")
    b.add_argument("--vllm-venv", default=os.environ.get("VLLM_VENV", os.path.expanduser("~/.venvs/vllm-cpu")))
    b.add_argument("--vllm-args", default=servers.VLLM_DEFAULT_ARGS,
                   help="extra vLLM api_server flags, one shell string (default: %(default)s)")
    b.add_argument("--model-cache", default="bench-out/models", help=f"where {MODELS_97M} is generated once")

    c = sub.add_parser("ceiling", parents=[common], help="router with sim:0 vs a bare aiohttp SSE server")
    c.add_argument("--streams", type=int, default=64)
    c.add_argument("--step-ms", type=float, default=0.0)
    c.add_argument("--input-len", type=int, default=16)
    c.add_argument("--output-len", type=int, default=256)
    c.set_defaults(duration=None)

    s = sub.add_parser("scaling", parents=[common], help="sim:20 with 1, 2, 4, 8 workers")
    s.add_argument("--workers", default="1,2,4,8")
    s.add_argument("--per-worker", type=int, default=32, help="streams per worker (and its --max-running-per-worker)")
    s.add_argument("--step-ms", type=float, default=20.0)
    s.add_argument("--waves", type=int, default=4, help="requests per level = waves x streams")
    s.add_argument("--input-len", type=int, default=64)
    s.add_argument("--output-len", type=int, default=64)
    args = p.parse_args(argv)
    if args.comparison == "ceiling" and args.duration is None and args.num_requests is None:
        args.duration = 10.0
    if args.quick:
        for key, value in QUICK[args.comparison].items():
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runner = {"baselines": run_baselines, "ceiling": run_ceiling, "scaling": run_scaling}[args.comparison]
    report = event_loop.run(runner(args))
    path = os.path.join(args.out_dir, f"{args.comparison}.json")
    write_json(report, path)
    print(f"\nJSON: {path}; plots in {args.out_dir}; server logs in {args.log_dir}; "
          f"load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
