"""gpupool side by side with its baselines, one command per comparison; each prints tables and writes JSON + PNG.

    python scripts/compare.py baselines   # gpupool vs the seeds' design, transformers serve, vLLM (when installed)
    python scripts/compare.py ceiling     # the router with --model sim:0 vs a bare aiohttp SSE server, 64 streams
    python scripts/compare.py scaling     # --model sim:20 with 1, 2, 4, 8 workers

Servers run one at a time on free local ports, each stopped (with its children) before the next starts, all measured
by the same client (scripts/bench.py) in this process. `--quick` shrinks every comparison to a smoke run of seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
from baselines import servers  # noqa: E402

MODELS_97M = "llama-97m"
GOALS = {"seeds": 10.0, "transformers": 2.0, "vllm": 1.5}  # gpupool's output tok/s over the baseline's, at 64


def model_dir(name: str, cache: Path) -> str:
    """builtin, llama-97m (generated once into the cache: random weights, built-in tokenizer) or a model dir."""
    if name == "builtin":
        return str(servers.REPO / "gpu_worker" / "builtin")
    if name != MODELS_97M:
        return name
    target = cache / MODELS_97M
    if not (target / "config.json").exists():
        print(f"generating the random 97M Llama into {target} ...", flush=True)
        code = f"import sys; sys.path.insert(0, {str(servers.REPO / 'scripts')!r}); import bench_engine; " \
               f"bench_engine.make_97m_model({str(target)!r})"
        subprocess.run([sys.executable, "-c", code], cwd=servers.REPO, check=True,
                       env={**os.environ, "PYTHONPATH": str(servers.REPO)})
    return str(target)


def machine() -> dict:
    cpu = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "host": os.uname().nodename,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg": os.getloadavg()}


async def measure(spec: servers.ServerSpec, log: Path, workload: bench.Workload, levels: list[bench.Level],
                  warmup: int, progress: bool) -> dict:
    """One server: start it, benchmark it, stop it. A server that cannot start gives {'skipped': why}."""
    print(f"\n=== {spec.name}: starting ({log})", flush=True)
    try:
        async with servers.launched(spec, log) as server:
            print(f"=== {spec.name}: ready in {server.ready_s:.1f} s on {server.url}", flush=True)
            workload = dataclasses.replace(workload, flavour=spec.flavour)
            result = await bench.run_benchmark(server.url, workload, levels, model=spec.model, warmup=warmup,
                                               server_pid=server.pid, progress=progress)
    except servers.StartupFailed as exc:
        print(f"=== {spec.name}: SKIPPED, {exc}", flush=True)
        return {"skipped": str(exc)}
    except RuntimeError as exc:  # the warm-up failed
        print(f"=== {spec.name}: FAILED, {exc}", flush=True)
        return {"skipped": str(exc)}
    result["meta"]["server"] = {"name": spec.name, "argv": spec.argv, "log": str(log)}
    print(bench.table(result["runs"], spec.name), flush=True)
    return result


def at(result: dict, concurrency: int) -> dict | None:
    return next((r for r in result.get("runs", []) if r["concurrency"] == concurrency and r["completed"]), None)


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def ms(run: dict | None, key: str, q: str = "p99") -> str:
    return "-" if run is None or run[key][q] is None else f"{run[key][q]:.1f}"


# ---------------------------------------------------------------- baselines


def baseline_specs(args: argparse.Namespace, model_path: str) -> list[servers.ServerSpec | str]:
    """The servers to run, in order; a string says why one is left out."""
    specs: list[servers.ServerSpec | str] = []
    for name in args.servers.split(","):
        if name == "gpupool":
            specs.append(servers.gpupool(model_path, args.devices, args.dtype, shlex.split(args.gpupool_args)))
        elif name == "seeds":
            specs.append(servers.seeds(model_path, args.dtype, args.seeds_replicas, args.threads))
        elif name == "transformers":
            specs.append(servers.transformers_serve(model_path, args.dtype, args.threads))
        elif name == "vllm":
            python = os.path.join(args.vllm_venv, "bin", "python")
            specs.append(servers.vllm(args.vllm_venv, model_path, args.dtype, shlex.split(args.vllm_args))
                         if os.path.exists(python) else
                         f"vllm: no venv at {args.vllm_venv} (give --vllm-venv; the issue shows how to make one)")
        else:
            raise SystemExit(f"unknown server {name!r}: use gpupool, seeds, transformers, vllm")
    return specs


def goal_met(name: str, base: tuple[dict | None, dict | None], ours: tuple[dict | None, dict | None]) -> str:
    """Issue 4's goal for one baseline: the throughput ratio at the peak, and for vLLM also no worse TTFT p99 and
    ITL p99 there and no worse throughput at concurrency 1."""
    (b_peak, b_one), (g_peak, g_one) = base, ours
    if b_peak is None or g_peak is None:
        return "-"
    met = g_peak["output_tokens_per_s"] >= GOALS.get(name, 1.0) * b_peak["output_tokens_per_s"]
    if name == "vllm":
        met = met and all(g_peak[k]["p99"] <= b_peak[k]["p99"] for k in ("ttft_ms", "itl_ms"))
        met = met and b_one is not None and g_one is not None and \
            g_one["output_tokens_per_s"] >= b_one["output_tokens_per_s"]
    return "yes" if met else "no"


def baselines_summary(model: str, results: dict[str, dict], peak: int) -> str:
    lines = [f"\n#### {model}: gpupool against each baseline (c={peak} unless said)",
             "| baseline | its tok/s | gpupool tok/s | ratio | goal | met | TTFT p99 ms (it / gpupool) "
             "| ITL p99 ms (it / gpupool) | c=1 tok/s (it / gpupool) |", "|---|---|---|---|---|---|---|---|---|"]
    ours = results.get("gpupool", {})
    g_peak, g_one = at(ours, peak), at(ours, 1)
    for name, result in results.items():
        if name == "gpupool":
            continue
        if "skipped" in result:
            lines.append(f"| {name} | skipped: {result['skipped'].splitlines()[0]} | | | | | | | |")
            continue
        b_peak, b_one = at(result, peak), at(result, 1)
        tput = [None if r is None else r["output_tokens_per_s"] for r in (b_peak, g_peak, b_one, g_one)]
        lines.append(f"| {name} | {bench.fmt(tput[0], 0)} | {bench.fmt(tput[1], 0)} | {ratio(tput[1], tput[0])} | "
                     f">= {GOALS.get(name, 1):g}x | {goal_met(name, (b_peak, b_one), (g_peak, g_one))} | "
                     f"{ms(b_peak, 'ttft_ms')} / {ms(g_peak, 'ttft_ms')} | {ms(b_peak, 'itl_ms')} / "
                     f"{ms(g_peak, 'itl_ms')} | {bench.fmt(tput[2], 0)} / {bench.fmt(tput[3], 0)} |")
    return "\n".join(lines)


async def run_baselines(args: argparse.Namespace) -> dict:
    out = Path(args.out_dir)
    workload = bench.Workload(args.input_len, args.output_len, seed=args.seed)
    levels = [bench.Level(c, None, None, args.num_requests or max(4 * c, 16), args.duration)
              for c in bench.ints(args.concurrency)]
    peak = max(lv.concurrency for lv in levels)
    report = {"comparison": "baselines", "machine": machine(), "argv": sys.argv[1:], "models": {}}
    summaries = []
    for model in args.models.split(","):
        path = model_dir(model, Path(args.model_cache))
        model_workload = dataclasses.replace(workload, tokenizer=path)
        results: dict[str, dict] = {}
        for spec in baseline_specs(args, path):
            if isinstance(spec, str):
                print(f"\n=== {spec}", flush=True)
                results[spec.split(":")[0]] = {"skipped": spec}
                continue
            log = Path(args.log_dir) / f"{Path(model).name}-{spec.name}.log"
            results[spec.name] = await measure(spec, log, model_workload, levels, args.warmup, not args.no_progress)
        report["models"][model] = results
        summaries.append(baselines_summary(model, results, peak))
        series = [(name, r["runs"]) for name, r in results.items() if "runs" in r]
        bench.plot(series, str(out / f"baselines-{Path(model).name}.png"),
                   f"{model}: {args.input_len} prompt + {args.output_len} output tokens, {os.cpu_count()} CPUs")
    report["machine"]["loadavg_end"] = os.getloadavg()
    print("\n".join(summaries))
    return report


# ---------------------------------------------------------------- the router's ceiling


def ceiling_summary(bare: dict, ours: dict, streams: int) -> str:
    b, g = at(bare, streams), at(ours, streams)
    b1, g1 = at(bare, 1), at(ours, 1)

    def row(name: str, key: str, q: str, runs: tuple[dict | None, dict | None]) -> str:
        x, y = (None if r is None else r[key][q] for r in runs)
        added = "-" if x is None or y is None else f"{y - x:+.3f}"
        return f"| {name} | {bench.fmt(x, 3)} | {bench.fmt(y, 3)} | {added} ms |"

    tput = [None if r is None else r["output_tokens_per_s"] for r in (b, g)]
    share = "-" if not all(tput) else f"{tput[1] / tput[0]:.0%}"
    lines = [f"\n#### The router's ceiling: {streams} streams, sim:0 vs the bare SSE server",
             "| | bare SSE | gpupool sim:0 | gpupool - bare |", "|---|---|---|---|",
             f"| output tok/s at {streams} | {bench.fmt(tput[0], 0)} | {bench.fmt(tput[1], 0)} | {share} of bare "
             f"(goal >= 70% and >= 100k tok/s) |",
             f"| SSE events with text /s at {streams} | {bench.fmt(b and b.get('token_events_per_s'), 0)} | "
             f"{bench.fmt(g and g.get('token_events_per_s'), 0)} | |",
             row(f"ITL p50 at {streams}", "itl_ms", "p50", (b, g)),
             row(f"ITL p99 at {streams}", "itl_ms", "p99", (b, g)),
             row(f"TPOT p50 at {streams}", "tpot_ms", "p50", (b, g)),
             row(f"TPOT p99 at {streams}", "tpot_ms", "p99", (b, g)),
             row("ITL p50 at 1", "itl_ms", "p50", (b1, g1)), row("ITL p99 at 1", "itl_ms", "p99", (b1, g1)),
             row("TTFT p50 at 1", "ttft_ms", "p50", (b1, g1))]
    for key, name in (("tokens_per_event", "tokens per SSE event"), ("server_cpu_pct", "server CPU % of a core"),
                      ("client_cpu_pct", "client CPU % of a core"),
                      ("client_cpu_us_per_event", "client CPU us per event")):
        x, y = (None if r is None else r.get(key) for r in (b, g))
        lines.append(f"| {name} at {streams} | {bench.fmt(x, 2)} | {bench.fmt(y, 2)} | |")
    if all(tput):
        met = tput[1] >= 0.7 * tput[0] and tput[1] >= 100_000
        lines.append(f"goal (>= 70% of bare and >= 100k tok/s at {streams} streams) met: {'yes' if met else 'no'}")
    return "\n".join(lines)


async def run_ceiling(args: argparse.Namespace) -> dict:
    out = Path(args.out_dir)
    workload = bench.Workload(args.input_len, args.output_len, seed=args.seed)
    levels = [bench.Level(c, None, None, args.num_requests or max(4 * c, 16), args.duration)
              for c in sorted({1, args.streams})]
    report = {"comparison": "ceiling", "machine": machine(), "argv": sys.argv[1:]}
    progress = not args.no_progress
    logs = Path(args.log_dir)
    ours = servers.gpupool(f"sim:{args.step_ms:g}", "cpu", None, shlex.split(args.gpupool_args))
    report["bare"] = await measure(servers.bare_sse(), logs / "ceiling-bare.log", workload, levels, args.warmup,
                                   progress)
    report["gpupool"] = await measure(ours, logs / "ceiling-gpupool.log", workload, levels, args.warmup, progress)
    report["machine"]["loadavg_end"] = os.getloadavg()
    print(ceiling_summary(report["bare"], report["gpupool"], args.streams))
    bench.plot([(name, report[name]["runs"]) for name in ("bare", "gpupool") if "runs" in report[name]],
               str(out / "ceiling.png"), f"bare aiohttp SSE vs gpupool sim:{args.step_ms:g}, {os.cpu_count()} CPUs")
    return report


# ---------------------------------------------------------------- scaling with the process count


def scaling_summary(results: dict[int, dict], per_worker: int, step_ms: float) -> tuple[str, list[tuple]]:
    lines = [f"\n#### Scaling: sim:{step_ms:g}, {per_worker} streams per worker",
             "| workers | streams | output tok/s | vs 1 worker | ideal tok/s | TTFT p99 ms | ITL p50/p99 ms "
             "| server CPU | client CPU |", "|---|---|---|---|---|---|---|---|---|"]
    base = next((r["output_tokens_per_s"] for w, res in sorted(results.items()) if (r := at(res, w * per_worker))),
                None)
    points = []
    for workers, result in sorted(results.items()):
        run = at(result, workers * per_worker)
        if run is None:
            lines.append(f"| {workers} | {workers * per_worker} | {result.get('skipped', 'no result')} |||||||")
            continue
        ideal = workers * per_worker * 1000 / step_ms if step_ms else None
        points.append((workers, run["output_tokens_per_s"], ideal))
        server = "-" if run["server_cpu_pct"] is None else f"{run['server_cpu_pct']:.0f}%"
        lines.append(f"| {workers} | {run['concurrency']} | {run['output_tokens_per_s']:.0f} | "
                     f"{ratio(run['output_tokens_per_s'], base)} | {bench.fmt(ideal, 0)} | {ms(run, 'ttft_ms')} | "
                     f"{ms(run, 'itl_ms', 'p50')}/{ms(run, 'itl_ms')} | {server} | {run['client_cpu_pct']:.0f}% |")
    eight = next((p[1] for p in points if p[0] == 8), None)
    met = "-" if eight is None or not base else ("yes" if eight >= 7.2 * base else "no")
    lines.append(f"goal (8 workers >= 7.2x one worker) met: {met}")
    return "\n".join(lines), points


def plot_scaling(points: list[tuple], path: str, title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no plot written to {path} (pip install matplotlib)", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    workers = [p[0] for p in points]
    ax.plot(workers, [p[1] for p in points], marker="o", label="gpupool")
    if all(p[2] for p in points):
        ax.plot(workers, [p[2] for p in points], linestyle="--", color="gray", label="ideal (1 token per step)")
    ax.set_xticks(workers)
    ax.set_xlabel("worker processes")
    ax.set_ylabel("output tokens/s")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run_scaling(args: argparse.Namespace) -> dict:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workload = bench.Workload(args.input_len, args.output_len, seed=args.seed)
    report = {"comparison": "scaling", "machine": machine(), "argv": sys.argv[1:], "workers": {}}
    for workers in bench.ints(args.workers):
        streams = workers * args.per_worker
        spec = servers.gpupool(f"sim:{args.step_ms:g}", ",".join(["cpu"] * workers), None,
                               ["--max-running-per-worker", str(args.per_worker), *shlex.split(args.gpupool_args)])
        level = bench.Level(streams, None, None, args.num_requests or args.waves * streams, args.duration)
        log = Path(args.log_dir) / f"scaling-{workers}.log"
        report["workers"][workers] = await measure(spec, log, workload, [level], args.warmup, not args.no_progress)
    report["machine"]["loadavg_end"] = os.getloadavg()
    text, points = scaling_summary(report["workers"], args.per_worker, args.step_ms)
    print(text)
    if points:
        plot_scaling(points, str(out / "scaling.png"), f"sim:{args.step_ms:g}, {args.per_worker} streams per "
                     f"worker, {os.cpu_count()} CPUs")
    return report


# ---------------------------------------------------------------- command line


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
    report = asyncio.run(runner(args))
    path = os.path.join(args.out_dir, f"{args.comparison}.json")
    bench.write_json(report, path)
    print(f"\nJSON: {path}; plots in {args.out_dir}; server logs in {args.log_dir}; "
          f"load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
