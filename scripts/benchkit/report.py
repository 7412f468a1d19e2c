"""Reports: the markdown table of runs, and the JSON file."""

from __future__ import annotations

import json
import os


def fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(runs: list[dict], label: str | None = None) -> str:
    head = ("| " + ("server | " if label else "") + "level | ok/sent | errors | req/s | out tok/s | TTFT p50/p99 ms "
            "| ITL p50/p99 ms | TPOT p50 ms | E2E p50/p99 ms | tok/event | client CPU | server CPU |")
    lines = [head, "|" + "---|" * (head.count(" | ") + 1)]
    for r in runs:
        level = f"c={r['concurrency']}" if r["concurrency"] else f"rate={r['request_rate']}"
        errors = ", ".join(f"{k}:{v}" for k, v in r["errors"].items()) or "0"
        t, i, p, e = r["ttft_ms"], r["itl_ms"], r["tpot_ms"], r["e2e_ms"]
        server = "-" if r["server_cpu_pct"] is None else f"{r['server_cpu_pct']:.0f}%"
        lines.append(("| " + (f"{label} | " if label else "") +
                      f"{level} | {r['completed']}/{r['num_requests']} | {errors} | {r['requests_per_s']:.2f} | "
                      f"{r['output_tokens_per_s']:.0f} | {fmt(t['p50'])}/{fmt(t['p99'])} | {fmt(i['p50'], 2)}/"
                      f"{fmt(i['p99'], 2)} | {fmt(p['p50'], 2)} | {fmt(e['p50'], 0)}/{fmt(e['p99'], 0)} | "
                      f"{fmt(r['tokens_per_event'], 2)} | {r['client_cpu_pct']:.0f}% | {server} |"))
    return "\n".join(lines)


def write_json(data: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
