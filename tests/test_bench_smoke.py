"""scripts/bench.py, briefly, against a live `gpupool serve --model sim:1`: the JSON it writes, never its speed."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
import sys

import aiohttp
import pytest

from tests.conftest import REPO, wait_until

BENCH = REPO / "scripts" / "bench.py"
BUILTIN = REPO / "gpu_worker" / "builtin"
SUMMARY_KEYS = {"mean", "p50", "p90", "p99"}


def load_script(name: str, path):
    """A file under scripts/ as a module (scripts/ is no package); registered first, as dataclasses need."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_bench():
    return load_script("scripts_bench", BENCH)


@pytest.fixture
async def sim_url(start_router) -> str:
    router = start_router("--model", "sim:1", "--devices", "cpu")

    async def ready() -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(router.url + "/ready") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    await wait_until(ready, 30, "/ready")
    return router.url


async def run_bench(tmp_path, *args: str) -> tuple[dict, str, str]:
    out = tmp_path / "bench.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(BENCH), "--out", str(out), "--no-progress", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, stderr.decode()
    return json.loads(out.read_text()), stdout.decode(), stderr.decode()


def check_summary(summary: dict, positive: bool) -> None:
    assert set(summary) == SUMMARY_KEYS
    assert None not in summary.values(), summary
    assert summary["p50"] <= summary["p90"] <= summary["p99"]
    assert (summary["p50"] > 0) if positive else (summary["p50"] >= 0)


async def test_concurrency_sweep_writes_complete_json(sim_url, tmp_path):
    data, stdout, stderr = await run_bench(
        tmp_path, "--url", sim_url, "--concurrency", "1,4", "--num-requests", "6", "--warmup", "2",
        "--input-len", "8", "--output-len", "5")
    meta = data["meta"]
    assert meta["url"] == sim_url + "/v1/completions" and meta["model"] == "sim:1"
    assert meta["workload"]["input_len"] == 8 and meta["workload"]["output_len"] == 5
    assert [run["concurrency"] for run in data["runs"]] == [1, 4]
    for run in data["runs"]:
        assert run["num_requests"] == run["completed"] == 6
        assert run["errors"] == {}
        assert run["output_tokens"] == run["output_tokens_requested"] == 30
        assert run["output_len_mismatches"] == 0
        assert run["prompt_tokens_mean"] == 8  # token-id prompts are taken as they are
        assert 1 <= run["token_events"] <= 30 and run["tokens_per_event"] >= 1
        for key in ("ttft_ms", "e2e_ms", "tpot_ms"):
            check_summary(run[key], positive=True)
        check_summary(run["itl_ms"], positive=False)
        assert run["ttft_ms"]["p99"] <= run["e2e_ms"]["p99"]
        assert run["requests_per_s"] > 0 and run["output_tokens_per_s"] > 0 and run["client_cpu_pct"] >= 0
    assert "| c=1 | 6/6 | 0 |" in stdout and "| c=4 | 6/6 | 0 |" in stdout
    png = tmp_path / "bench.png"
    assert png.exists() or "matplotlib is not installed" in stderr


async def test_chat_with_drawn_lengths_and_poisson_arrivals(sim_url, tmp_path):
    data, _, _ = await run_bench(
        tmp_path, "--url", sim_url, "--endpoint", "chat", "--tokenizer", str(BUILTIN), "--request-rate", "200,inf",
        "--num-requests", "5", "--warmup", "1", "--input-len", "12", "--output-len", "6", "--len-dist", "uniform",
        "--len-spread", "0.5", "--seed", "3", "--no-plot")
    assert [run["request_rate"] for run in data["runs"]] == ["200.0", "inf"]
    for run in data["runs"]:
        assert run["completed"] == 5 and run["errors"] == {}
        assert run["output_tokens"] == run["output_tokens_requested"]
        assert run["output_len_mismatches"] == 0
        assert 3 * 5 <= run["output_tokens"] <= 9 * 5  # lengths drawn from 6 * (1 ± 0.5)
    assert not (tmp_path / "bench.png").exists()


async def test_http_errors_are_counted_by_kind(sim_url, tmp_path):
    data, stdout, _ = await run_bench(
        tmp_path, "--url", sim_url, "--model", "no-such-model", "--concurrency", "2", "--num-requests", "4",
        "--warmup", "0", "--no-plot")
    (run,) = data["runs"]
    assert run["completed"] == 0 and run["errors"] == {"http_404": 4}
    assert run["output_tokens"] == 0 and run["ttft_ms"]["p50"] is None
    assert "http_404:4" in stdout


def test_prompts_have_exactly_the_asked_token_count():
    from tokenizers import Tokenizer

    bench = load_bench()
    workload = bench.Workload(input_len=40, tokenizer=str(BUILTIN))
    maker = bench.PromptMaker(workload)
    tokenizer = Tokenizer.from_file(str(BUILTIN / "tokenizer.json"))
    rng = random.Random(1)
    prompts = [maker.prompt(rng, n) for n in (1, 7, 40, 300)]
    assert [len(tokenizer.encode(p, add_special_tokens=False).ids) for p in prompts] == [1, 7, 40, 300]
    assert len(set(prompts)) == 4
    ids = bench.PromptMaker(bench.Workload(vocab_size=100)).prompt(rng, 50)
    assert len(ids) == 50 and all(4 <= i < 100 for i in ids)


@pytest.mark.parametrize("lines, tokens, usage, error", [
    # gpupool / OpenAI completions, compact JSON, usage in its own chunk
    ([b'data: {"id":"c","choices":[{"index":0,"text":" a","finish_reason":null}],"usage":null}',
      b'', b'data: {"id":"c","choices":[{"index":0,"text":"b","finish_reason":"length"}],"usage":null}',
      b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}',
      b'data: [DONE]'], 2, 2, None),
    # spaces after colons and CRLF line ends; a chat role chunk and an empty finishing delta carry no text
    ([b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}\r',
      b'data: {"choices": [{"delta": {"content": "hi"}}]}\r', b': keep-alive\r',
      b'data: {"choices": [{"delta": {}, "finish_reason": "length"}]}\r',
      b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}\r'], 1, 1, None),
    # transformers serve: the last chunk has empty text and the usage, no [DONE]
    ([b'data: {"choices":[{"index":0,"text":" x"}]}',
      b'data: {"choices":[{"finish_reason":"length","index":0,"text":""}],"usage":{"completion_tokens":1}}'],
     1, 1, None),
    # a text that quotes JSON is still one token, and an error event ends the stream
    ([b'data: {"choices":[{"text":"\\"text\\":\\"\\"","finish_reason":null}]}',
      b'data: {"error":{"message":"boom","type":"server_error"}}',
      b'data: {"choices":[{"text":"late"}]}'], 1, None, "sse_error"),
])
def test_sse_lines_are_read_without_parsing_each_chunk(lines, tokens, usage, error):
    bench = load_bench()
    result = bench.RequestResult(start=0.0)
    bench.read_events(result, lines, 1.0)
    assert len(result.token_times) == tokens
    assert result.output_tokens == usage
    assert result.error == error


async def test_launcher_starts_measures_and_stops_the_bare_sse_baseline(tmp_path):
    bench = load_bench()
    servers = load_script("scripts_baselines_servers", REPO / "scripts" / "baselines" / "servers.py")
    workload = bench.Workload(input_len=4, output_len=7)
    levels = [bench.Level(concurrency=3, num_requests=6)]
    async with servers.launched(servers.bare_sse(), tmp_path / "bare.log") as server:
        result = await bench.run_benchmark(server.url, workload, levels, model=servers.SERVED_NAME, warmup=1,
                                           server_pid=server.pid, progress=False)
        process = server.process
    assert process.poll() is not None, "the server is stopped on the way out"
    (run,) = result["runs"]
    assert run["completed"] == 6 and run["errors"] == {}
    assert run["output_tokens"] == run["output_tokens_requested"] == 42 and run["token_events"] == 42
    assert run["prompt_tokens_mean"] == 4
    if sys.platform == "linux":  # read from /proc
        assert run["server_cpu_pct"] >= 0


async def test_launcher_reports_a_server_that_dies_at_start(tmp_path):
    servers = load_script("scripts_baselines_servers", REPO / "scripts" / "baselines" / "servers.py")
    spec = servers.ServerSpec("broken", [sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"])
    with pytest.raises(servers.StartupFailed, match="(?s)exited with 3.*no model here"):
        async with servers.launched(spec, tmp_path / "broken.log"):
            pass
