"""`gpupool serve` as users run it: the README's command answers real HTTP; a worker that cannot start makes the
router exit non-zero with that worker's own message; bad flags are refused before anything starts."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys

import aiohttp

from tests.conftest import REPO

DEFAULT_COMMAND = "gpupool serve --model builtin --devices cpu"
CONSOLE_SCRIPT = [sys.executable, "-c", "import sys; from router.cli import main; sys.exit(main())"]


def readme_serve_command() -> list[str]:
    """The first `gpupool serve ...` line of the README (the default one while the README has none)."""
    readme = REPO / "README.md"
    text = readme.read_text() if readme.exists() else ""
    match = re.search(r"(?:^|&&|\$)\s*(gpupool serve(?:[ \t][^\n]*)?)$", text, re.MULTILINE)
    words = shlex.split((match.group(1) if match else DEFAULT_COMMAND).rstrip("\\ "))
    if "--port" in words:  # the test picks a free port
        at = words.index("--port")
        del words[at:at + 2]
    installed = shutil.which("gpupool")
    return ([installed] if installed else CONSOLE_SCRIPT) + words[1:]


async def test_the_readme_serve_command_answers_http(start_router):
    command = readme_serve_command()
    router = start_router(command=command)
    async with aiohttp.ClientSession() as session:
        async with session.get(router.url + "/v1/models") as response:
            assert response.status == 200
            assert (await response.json())["data"][0]["id"] == router.model
        body = {"model": router.model, "prompt": "Hello", "max_tokens": 4, "ignore_eos": True}
        async with session.post(router.url + "/v1/completions", json=body) as response:
            assert response.status == 200
            assert (await response.json())["usage"]["completion_tokens"] == 4
    router.signal(signal.SIGINT)
    assert router.wait_exit(60) == 0


async def test_a_worker_that_cannot_start_fails_the_router_with_its_message(start_router):
    router = start_router("--model", "/nonexistent/model-dir", "--devices", "cpu", wait=False)
    assert router.wait_exit(120) == 1
    log = "".join(router.lines)
    assert re.search(r"worker 0 \(cpu\) failed to start: .*/nonexistent/model-dir", log), log
    assert router.url is None


def test_bad_flags_are_refused_with_a_message():
    for flags, message in ((["--devices", "cuda:0,cuda:0"], "listed twice"), (["--max-queue", "-1"], "max-queue"),
                           (["--model", "sim:fast"], "sim:STEP_MS"), (["--devices", "tpu"], "unknown device")):
        done = subprocess.run([sys.executable, "-m", "router", "serve", *flags], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2 and message in done.stderr, done.stderr


def test_workers_tune_their_threads_unless_told_a_count():
    from protocol.sockets import Addresses
    from router.config import ServeConfig
    from router.worker_process import worker_command

    addresses = Addresses("ipc:///tmp/r", "ipc:///tmp/o")
    default = worker_command(ServeConfig(model="builtin", devices=("cpu",)), addresses, 0, 0, "cpu")
    told = worker_command(ServeConfig(model="builtin", devices=("cpu",), worker_threads_override=3), addresses, 0, 0,
                          "cpu")
    assert "--tune-threads" in default
    assert "--tune-threads" not in told
    assert told[told.index("--threads") + 1] == "3"


def test_the_step_budget_flags_reach_the_worker_config():
    from gpu_worker.__main__ import build_config, parse_args
    from protocol.sockets import Addresses
    from router.cli import build_parser, config_from_args
    from router.worker_process import worker_command

    addresses = Addresses("ipc:///tmp/r", "ipc:///tmp/o")
    for flags, batched, cap in (([], 2048, None), (["--max-num-batched-tokens", "512",
                                                   "--max-prefill-tokens-while-decoding", "64"], 512, 64)):
        serve = config_from_args(build_parser().parse_args(["serve", "--devices", "cpu", *flags]))
        command = worker_command(serve, addresses, 0, 0, "cpu")
        worker = build_config(parse_args(command[command.index("gpu_worker") + 1:]))
        assert (worker.max_batched_tokens, worker.max_prefill_tokens_while_decoding) == (batched, cap)
