"""Serving benchmark: streamed load on any OpenAI-compatible server (gpupool, vLLM, transformers serve, ...).

    python scripts/bench.py --url http://127.0.0.1:8000 --concurrency 1,8,32,64 --input-len 64 --output-len 64 \
        --tokenizer gpu_worker/builtin --out bench-out/run.json

Each level (a concurrency, or a Poisson request rate with --request-rate) sends streamed requests with fixed or
randomly drawn input/output lengths and `ignore_eos`, after a warm-up, and reports requests/s, output tokens/s, TTFT,
inter-token latency (ITL: the gap between events that carry text), time per output token (TPOT, per request) and
end-to-end latency at p50/p90/p99, errors by kind, and the CPU the client itself used (% of one core; on a small
machine a heavy client starves the server). Writes JSON, and a PNG when matplotlib is installed.

Output tokens come from the usage of the final chunk (`stream_options.include_usage`), else from the count of events
that carry text. The client parses no JSON per token: it looks at the bytes after `data:` and parses only the chunk
that carries the usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field

import aiohttp

PERCENTILES = (50, 90, 99)
_TEXT_KEYS = (b'"text":', b'"content":')


# ---------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workload:
    input_len: int = 64
    output_len: int = 64
    len_dist: str = "fixed"  # fixed | uniform | normal
    len_spread: float = 0.25  # uniform: L*(1±spread); normal: sd = spread*L
    seed: int = 0
    tokenizer: str | None = None  # a model dir or tokenizer.json: exact-length text prompts; else token-id prompts
    vocab_size: int = 8000  # token-id prompts draw ids from [4, vocab_size)
    endpoint: str = "completions"  # completions | chat
    flavour: str = "openai"  # openai: ignore_eos; transformers: generation_config with eos_token_id -1
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if self.input_len < 1 or self.output_len < 1:
            raise ValueError("--input-len and --output-len must be >= 1")
        if self.len_dist not in ("fixed", "uniform", "normal"):
            raise ValueError(f"unknown --len-dist {self.len_dist!r}")
        if self.endpoint == "chat" and self.tokenizer is None:
            raise ValueError("--endpoint chat sends text: give --tokenizer")


class PromptMaker:
    """Random prompts of exactly N tokens: words that are one token each and stay one token when joined."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.words: list[str] = []
        if workload.tokenizer is not None:
            from tokenizers import Tokenizer

            path = workload.tokenizer
            self.tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path)
            word = re.compile(r"^ [A-Za-z]{2,}$")
            for token_id in range(self.tokenizer.get_vocab_size()):
                text = self.tokenizer.decode([token_id])
                if word.match(text) and self.tokenizer.encode(text, add_special_tokens=False).ids == [token_id]:
                    self.words.append(text)
            if len(self.words) < 50:
                raise ValueError(f"{path}: too few single-token words ({len(self.words)}) to build prompts")

    def prompt(self, rng: random.Random, length: int) -> str | list[int]:
        if not self.words:
            return [rng.randrange(4, self.workload.vocab_size) for _ in range(length)]
        for _ in range(10):
            text = "".join(rng.choices(self.words, k=length))
            if len(self.tokenizer.encode(text, add_special_tokens=False).ids) == length:
                return text
        raise ValueError(f"could not build a prompt of exactly {length} tokens")


def draw_length(rng: random.Random, mean: int, dist: str, spread: float) -> int:
    if dist == "uniform":
        return max(1, round(rng.uniform(mean * (1 - spread), mean * (1 + spread))))
    if dist == "normal":
        return max(1, round(rng.gauss(mean, spread * mean)))
    return mean


def request_body(workload: Workload, model: str, prompt: str | list[int], max_tokens: int) -> bytes:
    body: dict = {"model": model, "max_tokens": max_tokens, "stream": True, "temperature": workload.temperature,
                  "stream_options": {"include_usage": True}}
    if workload.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if workload.flavour == "transformers":  # it rejects unknown fields; eos_token_id -1 disables EOS
        body["generation_config"] = json.dumps({"max_new_tokens": max_tokens, "eos_token_id": -1,
                                                "do_sample": workload.temperature > 0})
    else:
        body["ignore_eos"] = True
    return json.dumps(body).encode()


# ---------------------------------------------------------------- one streamed request


@dataclass
class RequestResult:
    start: float
    end: float = 0.0
    token_times: list[float] = field(default_factory=list)  # arrival of each event that carried text
    output_tokens: int | None = None  # from usage
    prompt_tokens: int | None = None
    requested_tokens: int = 0
    error: str | None = None

    @property
    def tokens(self) -> int:
        return self.output_tokens if self.output_tokens is not None else len(self.token_times)


def has_text(payload: bytes) -> bool:
    """Whether an SSE chunk carries generated text (completions `text` or chat `delta.content`), without JSON."""
    for key in _TEXT_KEYS:
        i = payload.find(key)
        if i >= 0:
            i += len(key)
            if payload[i:i + 1] == b" ":
                i += 1
            return payload[i:i + 1] == b'"' and payload[i + 1:i + 2] != b'"'
    return False


def read_events(result: RequestResult, lines: list[bytes], now: float) -> bool:
    """Account one read's complete lines; False once the stream reported an error."""
    for line in lines:
        if not line.startswith(b"data:"):
            continue  # blank separators, comments, `event:` lines
        payload = line[5:].strip()
        if has_text(payload):
            result.token_times.append(now)
        elif payload == b"[DONE]":
            continue
        elif b'"error"' in payload:
            result.error = "sse_error"
            return False
        if b'"usage":{' in payload or b'"usage": {' in payload:
            usage = json.loads(payload).get("usage") or {}
            result.output_tokens = usage.get("completion_tokens")
            result.prompt_tokens = usage.get("prompt_tokens")
    return True


async def stream_request(session: aiohttp.ClientSession, url: str, body: bytes, requested: int) -> RequestResult:
    result = RequestResult(start=time.perf_counter(), requested_tokens=requested)
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            if resp.status != 200:
                await resp.read()
                result.error = f"http_{resp.status}"
            else:
                tail = b""
                async for data in resp.content.iter_any():
                    lines = (tail + data).split(b"\n")
                    tail = lines.pop()
                    if not read_events(result, lines, time.perf_counter()):
                        break
                else:
                    read_events(result, [tail], time.perf_counter())
                    if not result.token_times and result.error is None:
                        result.error = "empty_stream"
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
        result.error = type(exc).__name__
    result.end = time.perf_counter()
    return result


# ---------------------------------------------------------------- load


@dataclass(frozen=True)
class Level:
    concurrency: int | None = None  # closed loop: this many streams at once
    request_rate: float | None = None  # open loop: Poisson arrivals per second (math.inf: all at once)
    max_concurrency: int | None = None  # cap for the open loop
    num_requests: int = 64
    duration: float | None = None  # closed loop only: keep launching for this long instead of num_requests


class RequestSource:
    """Deterministic stream of (body, requested output tokens), built on demand from one seeded RNG."""

    def __init__(self, workload: Workload, model: str, maker: PromptMaker, seed: int) -> None:
        self.workload, self.model, self.maker = workload, model, maker
        self.rng = random.Random(seed)

    def next(self) -> tuple[bytes, int]:
        w = self.workload
        input_len = draw_length(self.rng, w.input_len, w.len_dist, w.len_spread)
        output_len = draw_length(self.rng, w.output_len, w.len_dist, w.len_spread)
        return request_body(w, self.model, self.maker.prompt(self.rng, input_len), output_len), output_len


async def run_level(session, url: str, source: RequestSource, level: Level, progress) -> list[RequestResult]:
    results: list[RequestResult] = []

    def done(result: RequestResult) -> None:
        results.append(result)
        if progress is not None:
            progress.update(1)

    if level.concurrency is not None:
        deadline = None if level.duration is None else time.perf_counter() + level.duration
        launched = 0

        async def closed_loop() -> None:
            nonlocal launched
            while (launched < level.num_requests) if deadline is None else (time.perf_counter() < deadline):
                launched += 1
                body, requested = source.next()
                done(await stream_request(session, url, body, requested))

        await asyncio.gather(*(closed_loop() for _ in range(level.concurrency)))
        return results

    rng = random.Random(source.rng.random())
    cap = asyncio.Semaphore(level.max_concurrency or level.num_requests)
    start, at, tasks = time.perf_counter(), 0.0, []

    async def capped(body: bytes, requested: int) -> None:
        async with cap:
            done(await stream_request(session, url, body, requested))

    for _ in range(level.num_requests):
        if math.isfinite(level.request_rate):
            at += rng.expovariate(level.request_rate)
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        tasks.append(asyncio.create_task(capped(*source.next())))
    await asyncio.gather(*tasks)
    return results


# ---------------------------------------------------------------- statistics


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


# ---------------------------------------------------------------- a whole benchmark


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


# ---------------------------------------------------------------- reporting


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


def write_json(data: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


# ---------------------------------------------------------------- command line


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def levels_from_args(args: argparse.Namespace) -> list[Level]:
    if args.request_rate:
        rates = [math.inf if v == "inf" else float(v) for v in args.request_rate.split(",")]
        return [Level(None, r, args.max_concurrency, args.num_requests or 64) for r in rates]
    return [Level(c, None, None, args.num_requests or max(4 * c, 16), args.duration) for c in ints(args.concurrency)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--model", help="the model name to send (default: the first of /v1/models)")
    p.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    p.add_argument("--flavour", choices=("openai", "transformers"), default="openai",
                   help="how to ask for ignore_eos: the `ignore_eos` field (gpupool, vLLM) or transformers serve's "
                        "generation_config")
    p.add_argument("--concurrency", default="1,8,32,64", help="closed-loop levels, comma-separated")
    p.add_argument("--request-rate", help="open-loop Poisson levels in req/s, comma-separated ('inf' = all at once)")
    p.add_argument("--max-concurrency", type=int, help="cap on streams in flight for --request-rate")
    p.add_argument("--num-requests", type=int, help="per level (default: 4x the concurrency, at least 16; 64 per rate)")
    p.add_argument("--duration", type=float, help="closed loop: launch requests for this many seconds per level")
    p.add_argument("--warmup", type=int, default=8, help="requests before the first level, not measured")
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--len-dist", choices=("fixed", "uniform", "normal"), default="fixed")
    p.add_argument("--len-spread", type=float, default=0.25, help="uniform: L*(1±s); normal: sd = s*L")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", help="model dir or tokenizer.json: exact-length text prompts (else token ids)")
    p.add_argument("--vocab-size", type=int, default=8000, help="token-id prompts draw from [4, vocab-size)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument("--server-pid", type=int, help="also report this process tree's CPU (Linux)")
    p.add_argument("--out", default="bench-out/bench.json", help="JSON path; the PNG goes beside it")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        workload = Workload(args.input_len, args.output_len, args.len_dist, args.len_spread, args.seed,
                            args.tokenizer, args.vocab_size, args.endpoint, args.flavour, args.temperature)
        levels = levels_from_args(args)
    except ValueError as exc:
        p.error(str(exc))
    result = asyncio.run(run_benchmark(args.url, workload, levels, model=args.model, warmup=args.warmup,
                                       server_pid=args.server_pid, progress=not args.no_progress,
                                       request_timeout=args.request_timeout))
    result["meta"]["argv"] = sys.argv[1:] if argv is None else argv
    write_json(result, args.out)
    print(table(result["runs"]))
    print(f"\nclient: {os.cpu_count()} CPUs, load {result['meta']['loadavg_start']:.2f} -> "
          f"{result['meta']['loadavg_end']:.2f}; JSON: {args.out}")
    if not args.no_plot:
        png = os.path.splitext(args.out)[0] + ".png"
        if plot([(result["meta"]["model"], result["runs"])], png, f"{result['meta']['url']}"):
            print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
