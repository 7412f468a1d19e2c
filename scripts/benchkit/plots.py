"""PNG plots, when matplotlib is installed: latency and throughput per level, and scaling with workers."""

from __future__ import annotations

import math
import os
import sys


def plot(series: list[tuple[str, list[dict]]], path: str, title: str) -> bool:
    """Throughput and latency against concurrency (or request rate), one line per series; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no plot written to {path} (pip install matplotlib)", file=sys.stderr)
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ticks: set[float] = set()

    fig, (ax_tput, ax_ttft, ax_itl) = plt.subplots(1, 3, figsize=(16, 4.8))
    for label, runs in series:
        runs = [r for r in runs if r["completed"]]
        rate = not runs or runs[0]["concurrency"] is None
        x = [float(r["request_rate"]) if rate else r["concurrency"] for r in runs]
        ticks.update(v for v in x if math.isfinite(v))
        line, = ax_tput.plot(x, [r["output_tokens_per_s"] for r in runs], marker="o", label=label)
        for ax, key in ((ax_ttft, "ttft_ms"), (ax_itl, "itl_ms")):
            ax.plot(x, [r[key]["p50"] for r in runs], marker="o", color=line.get_color(), label=f"{label} p50")
            ax.plot(x, [r[key]["p99"] for r in runs], marker="x", linestyle="--", color=line.get_color(),
                    label=f"{label} p99")
    xlabel = "request rate (req/s)" if series and series[0][1] and series[0][1][0]["concurrency"] is None \
        else "concurrent streams"
    for ax, name in ((ax_tput, "output tokens/s"), (ax_ttft, "TTFT (ms)"), (ax_itl, "inter-token latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ticks))
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        ax.set_yscale("log")  # servers differ by 50x: a linear axis flattens the slow ones
        ax.yaxis.set_major_formatter(plain)
    ax_tput.legend(fontsize=8)
    ax_itl.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


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
