"""A whole benchmark: warm up, then run each level in turn and summarise it."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict

import aiohttp

from benchkit.load import Level, RequestSource, run_level
from benchkit.stats import process_tree_cpu_seconds, summarise
from benchkit.workload import PromptMaker, Workload


async def fetch_model_name(session: aiohttp.ClientSession, base_url: str) -> str:
    async with session.get(f"{base_url}/v1/models") as resp:
        resp.raise_for_status()
        return (await resp.json())["data"][0]["id"]


def make_progress(total: int | None, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="req", leave=False, file=sys.stderr)


async def run_benchmark(url: str, workload: Workload, levels: list[Level], *, model: str | None = None,
                        warmup: int = 8, server_pid: int | None = None, progress: bool = True,
                        request_timeout: float = 600.0) -> dict:
    """Warm up, then run each level in turn; the dict is what --out writes."""
    base_url = url.rstrip("/").removesuffix("/v1")
    path = "/v1/chat/completions" if workload.endpoint == "chat" else "/v1/completions"
    maker = PromptMaker(workload)
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        model = model or await fetch_model_name(session, base_url)
        meta = {"url": base_url + path, "model": model, "workload": asdict(workload), "warmup": warmup,
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": os.uname().nodename,
                "cpu_count": os.cpu_count(), "python": sys.version.split()[0], "loadavg_start": os.getloadavg()[0]}
        if warmup:
            source = RequestSource(workload, model, maker, workload.seed + 10_000)
            peak = max((lv.concurrency or lv.max_concurrency or 8) for lv in levels)
            bar = make_progress(warmup, "warm-up", progress)
            results = await run_level(session, base_url + path, source, Level(min(warmup, peak), None, None, warmup),
                                      bar)
            if bar is not None:
                bar.close()
            failed = [r.error for r in results if r.error is not None]
            if failed:
                raise RuntimeError(f"{len(failed)} of {warmup} warm-up requests failed: {sorted(set(failed))}")
        runs = []
        for i, level in enumerate(levels):
            source = RequestSource(workload, model, maker, workload.seed + i)
            name = f"c={level.concurrency}" if level.concurrency else f"rate={level.request_rate}"
            bar = make_progress(None if level.duration else level.num_requests, name, progress)
            load0, cpu0 = os.getloadavg()[0], time.process_time()
            server0 = None if server_pid is None else process_tree_cpu_seconds(server_pid)
            start = time.perf_counter()
            results = await run_level(session, base_url + path, source, level, bar)
            wall = time.perf_counter() - start
            client_cpu = time.process_time() - cpu0
            server1 = None if server_pid is None else process_tree_cpu_seconds(server_pid)
            server_cpu = None if server0 is None or server1 is None else server1 - server0
            if bar is not None:
                bar.close()
            runs.append(summarise(level, results, wall, client_cpu, server_cpu, (load0, os.getloadavg()[0])))
        meta["loadavg_end"] = os.getloadavg()[0]
    return {"meta": meta, "runs": runs}
