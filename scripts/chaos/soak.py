"""Soak: mixed load (completions and chat, streamed and whole, n of 1 or 2) from a closed loop of clients, a tenth
of whose requests are dropped by the client at a random moment.

Before the measured run, a warm-up fills the workers' prefix caches with long unique prompts: the cache keeps the
hashes of freed KV blocks until their blocks are reused, so it grows until it covers the whole KV pool and then
stays there. Without the warm-up, that bounded filling (about 15 MB per worker of 16384 blocks) is what a 10-minute
soak measures. The warm-up is sized by the workers' KV capacity (from /ready), with a quarter to spare: a fixed 200
prompts of the built-in model's 2032 tokens covered only 78% of its pools, and the soak then measured the last 22%
filling (an in-process run of the engine alone: +10 MB, then flat once the cache was full).

Bars: each process's RSS slope (least squares over the samples after the first sixth of the run) is at most
1 MB/min; no error other than the injected disconnects; no worker restart and no bad frame.
"""

from __future__ import annotations

import asyncio
import math
import random
import time

from .client import completion_body, request, session
from .report import Options, Result
from .server import context_length, family, metrics, process_rss, workers

FULL_DURATION_S = 600.0
CLIENTS = 32
SAMPLE_EVERY_S = 5.0
DROP_P = 0.1
SLOPE_BAR_MB_PER_MIN = 1.0
WARMUP_SPARE = 1.25  # warm-up prompt tokens over the workers' total KV capacity


async def run(start, opt: Options) -> Result:
    duration = opt.seconds(FULL_DURATION_S)
    server = start(*opt.serve_args())
    rng = random.Random(opt.seed)
    counts = {"completed": 0, "dropped": 0}
    errors: dict[str, int] = {}
    samples: list[tuple[float, dict[str, float]]] = []
    async with session() as http:
        pool = await workers(http, server.url)
        pids = [w["pid"] for w in pool]
        warmed = await _fill_prefix_caches(http, server, rng, sum(w["kv_capacity_tokens"] for w in pool))
        began = time.monotonic()
        stop_at = began + duration

        async def client() -> None:
            while time.monotonic() < stop_at:
                path, body, expected = _mixed(server.model, rng)
                if rng.random() < DROP_P:
                    try:
                        await asyncio.wait_for(request(http, server.url, path, body, 60), rng.uniform(0.0, 1.5))
                    except TimeoutError:
                        pass
                    counts["dropped"] += 1
                    continue
                o = await request(http, server.url, path, body, 60)
                if o.ok and o.completion_tokens == expected:
                    counts["completed"] += 1
                else:
                    key = f"{o.status}:{o.error}:{'hung' if o.hung else o.completion_tokens}"
                    errors[key] = errors.get(key, 0) + 1

        async def sampler() -> None:
            while time.monotonic() < stop_at:
                samples.append(((time.monotonic() - began) / 60, process_rss(server, pids)))
                await asyncio.sleep(SAMPLE_EVERY_S)

        await asyncio.gather(sampler(), *(client() for _ in range(opt.count(CLIENTS))))
        final = await metrics(http, server.url)

    steady = [s for s in samples if s[0] * 60 >= duration / 6]
    slopes = {name: _slope([(t, rss[name]) for t, rss in steady]) for name in samples[0][1]}
    result = Result("soak", {
        "duration_s": duration, "warmup_prompts": warmed, "clients": opt.count(CLIENTS), "completed": counts["completed"],
        "dropped_injected": counts["dropped"], "errors": errors or 0, "samples": len(steady),
        **{f"{name}_mb_per_min": slope for name, slope in slopes.items()},
        **{f"{name}_rss_mb": f"{samples[0][1][name]:.1f}->{samples[-1][1][name]:.1f}" for name in slopes},
        "restarts": final.get("gpupool_worker_restarts_total", 0.0),
        "bad_frames": family(final, "gpupool_bad_frames_total"),
    })
    result.series["rss_mb"] = [[round(t, 3), {name: round(mb, 1) for name, mb in rss.items()}] for t, rss in samples]
    result.check(f"RSS slope <= {SLOPE_BAR_MB_PER_MIN:g} MB/min", all(s <= SLOPE_BAR_MB_PER_MIN for s in slopes.values()))
    result.check("no error but the injected ones", not errors)
    result.check("no restart, no bad frame", result.figures["restarts"] == 0 and result.figures["bad_frames"] == 0)
    return result


async def _fill_prefix_caches(http, server, rng: random.Random, kv_tokens: int) -> int:
    """Long prompts of random token ids (max_tokens 1), 8 at a time, WARMUP_SPARE times the KV capacity in all; how
    many completed."""
    length = min(4000, await context_length(http, server.url) - 16)
    prompts = 8 * math.ceil(WARMUP_SPARE * kv_tokens / length / 8)
    done = 0

    async def one() -> None:
        nonlocal done
        body = {"model": server.model, "prompt": [rng.randrange(1000, 7000) for _ in range(length)], "max_tokens": 1}
        outcome = await request(http, server.url, "/v1/completions", body, 120)
        done += outcome.ok

    for _ in range(prompts // 8):
        await asyncio.gather(*(one() for _ in range(8)))
    return done


def _mixed(model: str, rng: random.Random) -> tuple[str, dict, int]:
    """A random request: its path, body, and the completion tokens it must report."""
    max_tokens, n, stream = rng.randint(8, 128), rng.choice((1, 1, 2)), rng.random() < 0.5
    body = completion_body(model, max_tokens, stream=stream, n=n, prompt=f"soak {rng.random()}")
    if rng.random() < 0.5:
        return "/v1/completions", body, n * max_tokens
    del body["prompt"]
    body["messages"] = [{"role": "user", "content": f"soak {rng.random()}"}]
    return "/v1/chat/completions", body, n * max_tokens


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (MB per minute); nan with fewer than 2 points."""
    if len(points) < 2:
        return float("nan")
    mean_t = sum(t for t, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (y - mean_y) for t, y in points) / var if var else float("nan")
