"""Statistics of one level: percentiles, throughput, errors by kind, client and server CPU."""

from __future__ import annotations

import math
import os

from benchkit.load import Level
from benchkit.sse_client import RequestResult

PERCENTILES = (50, 90, 99)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summary_ms(values: list[float]) -> dict[str, float | None]:
    values = sorted(v * 1e3 for v in values)
    out = {"mean": sum(values) / len(values) if values else math.nan}
    out.update({f"p{q}": percentile(values, q) for q in PERCENTILES})
    return {k: (None if math.isnan(v) else round(v, 4)) for k, v in out.items()}


def process_tree_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process and all its descendants, from /proc (Linux); None elsewhere or once it is gone."""
    try:
        children: dict[int, list[int]] = {}
        times: dict[int, float] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
            times[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None
    if pid not in times:
        return None
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo.extend(children.get(p, ()))
    return total


def summarise(level: Level, results: list[RequestResult], wall: float, client_cpu: float,
              server_cpu: float | None, load: tuple[float, float]) -> dict:
    ok = [r for r in results if r.error is None]
    errors: dict[str, int] = {}
    for r in results:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
    output_tokens = sum(r.tokens for r in ok)
    events = sum(len(r.token_times) for r in ok)
    prompt = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    gaps = [b - a for r in ok for a, b in zip(r.token_times, r.token_times[1:])]
    tpot = [(r.token_times[-1] - r.token_times[0]) / (r.tokens - 1) for r in ok if r.tokens > 1 and r.token_times]
    return {
        "concurrency": level.concurrency,
        "request_rate": None if level.request_rate is None else str(level.request_rate),
        "max_concurrency": level.max_concurrency,
        "num_requests": len(results),
        "completed": len(ok),
        "errors": errors,
        "duration_s": round(wall, 4),
        "requests_per_s": round(len(ok) / wall, 4),
        "output_tokens": output_tokens,
        "output_tokens_requested": sum(r.requested_tokens for r in ok),
        "output_len_mismatches": sum(r.tokens != r.requested_tokens for r in ok),
        "output_tokens_per_s": round(output_tokens / wall, 2),
        "prompt_tokens_mean": round(sum(prompt) / len(prompt), 2) if prompt else None,
        "total_tokens_per_s": round((output_tokens + sum(prompt)) / wall, 2),
        "token_events": events,
        "token_events_per_s": round(events / wall, 2),
        "tokens_per_event": round(output_tokens / events, 3) if events else None,
        "ttft_ms": summary_ms([r.token_times[0] - r.start for r in ok if r.token_times]),
        "itl_ms": summary_ms(gaps),
        "tpot_ms": summary_ms(tpot),
        "e2e_ms": summary_ms([r.end - r.start for r in ok]),
        "client_cpu_pct": round(client_cpu / wall * 100, 1),
        "client_cpu_us_per_event": round(client_cpu / events * 1e6, 2) if events else None,
        "server_cpu_pct": None if server_cpu is None else round(server_cpu / wall * 100, 1),
        "loadavg_start": round(load[0], 2),
        "loadavg_end": round(load[1], 2),
    }
