"""compare.py ceiling: the router with --model sim:0 against a bare aiohttp SSE server."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from baselines import servers
from benchkit.common import at, machine, measure
from benchkit.load import Level
from benchkit.plots import plot
from benchkit.report import fmt
from benchkit.workload import Workload


def ceiling_summary(bare: dict, ours: dict, streams: int) -> str:
    b, g = at(bare, streams), at(ours, streams)
    b1, g1 = at(bare, 1), at(ours, 1)

    def row(name: str, key: str, q: str, runs: tuple[dict | None, dict | None]) -> str:
        x, y = (None if r is None else r[key][q] for r in runs)
        added = "-" if x is None or y is None else f"{y - x:+.3f}"
        return f"| {name} | {fmt(x, 3)} | {fmt(y, 3)} | {added} ms |"

    tput = [None if r is None else r["output_tokens_per_s"] for r in (b, g)]
    share = "-" if not all(tput) else f"{tput[1] / tput[0]:.0%}"
    lines = [f"\n#### The router's ceiling: {streams} streams, sim:0 vs the bare SSE server",
             "| | bare SSE | gpupool sim:0 | gpupool - bare |", "|---|---|---|---|",
             f"| output tok/s at {streams} | {fmt(tput[0], 0)} | {fmt(tput[1], 0)} | {share} of bare "
             f"(goal >= 70% and >= 100k tok/s) |",
             f"| SSE events with text /s at {streams} | {fmt(b and b.get('token_events_per_s'), 0)} | "
             f"{fmt(g and g.get('token_events_per_s'), 0)} | |",
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
        lines.append(f"| {name} at {streams} | {fmt(x, 2)} | {fmt(y, 2)} | |")
    if all(tput):
        met = tput[1] >= 0.7 * tput[0] and tput[1] >= 100_000
        lines.append(f"goal (>= 70% of bare and >= 100k tok/s at {streams} streams) met: {'yes' if met else 'no'}")
    return "\n".join(lines)


async def run_ceiling(args: argparse.Namespace) -> dict:
    out = Path(args.out_dir)
    workload = Workload(args.input_len, args.output_len, seed=args.seed)
    levels = [Level(c, None, None, args.num_requests or max(4 * c, 16), args.duration)
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
    plot([(name, report[name]["runs"]) for name in ("bare", "gpupool") if "runs" in report[name]],
               str(out / "ceiling.png"), f"bare aiohttp SSE vs gpupool sim:{args.step_ms:g}, {os.cpu_count()} CPUs")
    return report
