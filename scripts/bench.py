"""Serving benchmark: streamed load on any OpenAI-compatible server (gpupool, vLLM, transformers serve, ...).

    python scripts/bench.py --url http://127.0.0.1:8000 --concurrency 1,8,32,64 --input-len 64 --output-len 64 \
        --tokenizer gpu_worker/builtin --out bench-out/run.json

Each level (a concurrency, or a Poisson request rate with --request-rate) sends streamed requests with fixed or
randomly drawn input/output lengths and `ignore_eos`, after a warm-up, and reports requests/s, output tokens/s, TTFT,
inter-token latency (ITL: the gap between events that carry text), time per output token (TPOT, per request) and
end-to-end latency at p50/p90/p99, errors by kind, and the CPU the client itself used (% of one core; on a small
machine a heavy client starves the server). Writes JSON, and a PNG when matplotlib is installed.

Output tokens come from the usage of the final chunk (`stream_options.include_usage`), else from the count of events
that carry text. The client parses no JSON per token: it looks at the bytes after `data:` and parses only the chunk
that carries the usage.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The names below are re-exported: tests and other scripts use them as bench.<name>.
from benchkit import event_loop  # noqa: E402
from benchkit.load import Level, RequestSource, run_level  # noqa: E402,F401
from benchkit.plots import plot  # noqa: E402
from benchkit.report import fmt, table, write_json  # noqa: E402,F401
from benchkit.runner import fetch_model_name, make_progress, run_benchmark  # noqa: E402,F401
from benchkit.sse_client import RequestResult, has_text, read_events, stream_request  # noqa: E402,F401
from benchkit.stats import PERCENTILES, percentile, process_tree_cpu_seconds, summarise, summary_ms  # noqa: E402,F401
from benchkit.workload import PromptMaker, Workload, draw_length, ints, request_body  # noqa: E402,F401


def levels_from_args(args: argparse.Namespace) -> list[Level]:
    if args.request_rate:
        rates = [math.inf if v == "inf" else float(v) for v in args.request_rate.split(",")]
        return [Level(None, r, args.max_concurrency, args.num_requests or 64) for r in rates]
    return [Level(c, None, None, args.num_requests or max(4 * c, 16), args.duration) for c in ints(args.concurrency)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--model", help="the model name to send (default: the first of /v1/models)")
    p.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    p.add_argument("--flavour", choices=("openai", "transformers"), default="openai",
                   help="how to ask for ignore_eos: the `ignore_eos` field (gpupool, vLLM) or transformers serve's "
                        "generation_config")
    p.add_argument("--concurrency", default="1,8,32,64", help="closed-loop levels, comma-separated")
    p.add_argument("--request-rate", help="open-loop Poisson levels in req/s, comma-separated ('inf' = all at once)")
    p.add_argument("--max-concurrency", type=int, help="cap on streams in flight for --request-rate")
    p.add_argument("--num-requests", type=int, help="per level (default: 4x the concurrency, at least 16; 64 per rate)")
    p.add_argument("--duration", type=float, help="closed loop: launch requests for this many seconds per level")
    p.add_argument("--warmup", type=int, default=8, help="requests before the first level, not measured")
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--len-dist", choices=("fixed", "uniform", "normal"), default="fixed")
    p.add_argument("--len-spread", type=float, default=0.25, help="uniform: L*(1±s); normal: sd = s*L")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", help="model dir or tokenizer.json: exact-length text prompts (else token ids)")
    p.add_argument("--vocab-size", type=int, default=8000, help="token-id prompts draw from [4, vocab-size)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--server-pid", type=int, help="also report this process tree's CPU (Linux)")
    p.add_argument("--out", default="bench-out/bench.json", help="JSON path; the PNG goes beside it")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        workload = Workload(args.input_len, args.output_len, args.len_dist, args.len_spread, args.seed,
                            args.tokenizer, args.vocab_size, args.endpoint, args.flavour, args.temperature)
        levels = levels_from_args(args)
    except ValueError as exc:
        p.error(str(exc))
    result = event_loop.run(run_benchmark(args.url, workload, levels, model=args.model, warmup=args.warmup,
                                          server_pid=args.server_pid, progress=not args.no_progress,
                                          request_timeout=args.request_timeout))
    result["meta"]["argv"] = sys.argv[1:] if argv is None else argv
    write_json(result, args.out)
    print(table(result["runs"]))
    print(f"\nclient: {os.cpu_count()} CPUs, load {result['meta']['loadavg_start']:.2f} -> "
          f"{result['meta']['loadavg_end']:.2f}; JSON: {args.out}")
    if not args.no_plot:
        png = os.path.splitext(args.out)[0] + ".png"
        if plot([(result["meta"]["model"], result["runs"])], png, f"{result['meta']['url']}"):
            print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
