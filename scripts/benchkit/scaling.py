"""compare.py scaling: --model sim:20 with 1, 2, 4, 8 worker processes."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from baselines import servers
from benchkit.common import at, machine, measure, ms, ratio
from benchkit.load import Level
from benchkit.plots import plot_scaling
from benchkit.report import fmt
from benchkit.workload import Workload, ints


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
                     f"{ratio(run['output_tokens_per_s'], base)} | {fmt(ideal, 0)} | {ms(run, 'ttft_ms')} | "
                     f"{ms(run, 'itl_ms', 'p50')}/{ms(run, 'itl_ms')} | {server} | {run['client_cpu_pct']:.0f}% |")
    eight = next((p[1] for p in points if p[0] == 8), None)
    met = "-" if eight is None or not base else ("yes" if eight >= 7.2 * base else "no")
    lines.append(f"goal (8 workers >= 7.2x one worker) met: {met}")
    return "\n".join(lines), points


async def run_scaling(args: argparse.Namespace) -> dict:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workload = Workload(args.input_len, args.output_len, seed=args.seed)
    report = {"comparison": "scaling", "machine": machine(), "argv": sys.argv[1:], "workers": {}}
    for workers in ints(args.workers):
        streams = workers * args.per_worker
        spec = servers.gpupool(f"sim:{args.step_ms:g}", ",".join(["cpu"] * workers), None,
                               ["--max-running-per-worker", str(args.per_worker), *shlex.split(args.gpupool_args)])
        level = Level(streams, None, None, args.num_requests or args.waves * streams, args.duration)
        log = Path(args.log_dir) / f"scaling-{workers}.log"
        report["workers"][workers] = await measure(spec, log, workload, [level], args.warmup, not args.no_progress)
    report["machine"]["loadavg_end"] = os.getloadavg()
    text, points = scaling_summary(report["workers"], args.per_worker, args.step_ms)
    print(text)
    if points:
        plot_scaling(points, str(out / "scaling.png"), f"sim:{args.step_ms:g}, {args.per_worker} streams per "
                     f"worker, {os.cpu_count()} CPUs")
    return report
