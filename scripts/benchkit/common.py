"""What every comparison shares: model dirs, the machine, measuring one server, and table cells."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

from baselines import servers
from benchkit.load import Level
from benchkit.report import table
from benchkit.runner import run_benchmark
from benchkit.workload import Workload

MODELS_97M = "llama-97m"


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


async def measure(spec: servers.ServerSpec, log: Path, workload: Workload, levels: list[Level],
                  warmup: int, progress: bool) -> dict:
    """One server: start it, benchmark it, stop it. A server that cannot start gives {'skipped': why}."""
    print(f"\n=== {spec.name}: starting ({log})", flush=True)
    try:
        async with servers.launched(spec, log) as server:
            print(f"=== {spec.name}: ready in {server.ready_s:.1f} s on {server.url}", flush=True)
            workload = dataclasses.replace(workload, flavour=spec.flavour)
            result = await run_benchmark(server.url, workload, levels, model=spec.model, warmup=warmup,
                                               server_pid=server.pid, progress=progress)
    except servers.StartupFailed as exc:
        print(f"=== {spec.name}: SKIPPED, {exc}", flush=True)
        return {"skipped": str(exc)}
    except RuntimeError as exc:  # the warm-up failed
        print(f"=== {spec.name}: FAILED, {exc}", flush=True)
        return {"skipped": str(exc)}
    result["meta"]["server"] = {"name": spec.name, "argv": spec.argv, "log": str(log)}
    print(table(result["runs"], spec.name), flush=True)
    return result


def at(result: dict, concurrency: int) -> dict | None:
    return next((r for r in result.get("runs", []) if r["concurrency"] == concurrency and r["completed"]), None)


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def ms(run: dict | None, key: str, q: str = "p99") -> str:
    return "-" if run is None or run[key][q] is None else f"{run[key][q]:.1f}"
