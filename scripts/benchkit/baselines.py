"""compare.py baselines: gpupool against the seeds' design, transformers serve and vLLM."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

from baselines import servers
from benchkit.common import at, machine, measure, model_dir, ms, ratio
from benchkit.load import Level
from benchkit.plots import plot
from benchkit.report import fmt
from benchkit.workload import Workload, ints

GOALS = {"seeds": 10.0, "transformers": 2.0, "vllm": 1.5}  # gpupool's output tok/s over the baseline's, at 64


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
        lines.append(f"| {name} | {fmt(tput[0], 0)} | {fmt(tput[1], 0)} | {ratio(tput[1], tput[0])} | "
                     f">= {GOALS.get(name, 1):g}x | {goal_met(name, (b_peak, b_one), (g_peak, g_one))} | "
                     f"{ms(b_peak, 'ttft_ms')} / {ms(g_peak, 'ttft_ms')} | {ms(b_peak, 'itl_ms')} / "
                     f"{ms(g_peak, 'itl_ms')} | {fmt(tput[2], 0)} / {fmt(tput[3], 0)} |")
    return "\n".join(lines)


async def run_baselines(args: argparse.Namespace) -> dict:
    out = Path(args.out_dir)
    workload = Workload(args.input_len, args.output_len, seed=args.seed)
    levels = [Level(c, None, None, args.num_requests or max(4 * c, 16), args.duration)
              for c in ints(args.concurrency)]
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
        plot(series, str(out / f"baselines-{Path(model).name}.png"),
                   f"{model}: {args.input_len} prompt + {args.output_len} output tokens, {os.cpu_count()} CPUs")
    report["machine"]["loadavg_end"] = os.getloadavg()
    print("\n".join(summaries))
    return report
