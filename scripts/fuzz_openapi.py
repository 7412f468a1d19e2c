"""Fuzz a live `gpupool serve` from its OpenAPI description with schemathesis, and keep the served copy current.

    python scripts/fuzz_openapi.py --export            # docs/openapi.yaml -> router/openapi.json (what the router serves)
    python scripts/fuzz_openapi.py --cases 10000       # fuzz; needs `pip install schemathesis`

The fuzz run starts `gpupool serve --model sim:0` on 127.0.0.1, fetches /openapi.json, pins the `model` field to the
served name (otherwise nearly every generated request would be a 404 for an unknown model), and runs schemathesis
with its examples, coverage and fuzzing phases, positive and negative data, until --cases test cases have run. The
bar: no 500 from the server (schemathesis' not_a_server_error check and the router's own request counter), every
response conforming to the description, and the server healthy afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos.server import REPO, Launcher, metrics, workers  # noqa: E402

SPEC = REPO / "docs" / "openapi.yaml"
SERVED = REPO / "router" / "openapi.json"
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,negative_data_rejection")
GENERATION_OPERATIONS = 2  # the two POSTs; the GETs take no input, so they yield only a handful of distinct cases
# A 504 is the right answer to a tiny `timeout`, and a 503 to a full queue; a 500 or a 502 (a worker died) never is.
CONFIG = """[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503", "504"]
"""


def export() -> None:
    import yaml  # only needed to regenerate the served copy

    SERVED.write_text(json.dumps(yaml.safe_load(SPEC.read_text()), indent=1) + "\n")
    print(f"wrote {SERVED.relative_to(REPO)}")


def fuzz(cases: int, seed: int, out: Path, phases: str) -> int:
    launcher = Launcher(out)
    try:
        server = launcher("--model", "sim:0", "--devices", "cpu,cpu", "--request-timeout", "30")
        spec = asyncio.run(_get_json(server.url + "/openapi.json"))
        for name in ("CompletionRequest", "ChatCompletionRequest"):
            spec["components"]["schemas"][name]["properties"]["model"] = {"type": "string", "enum": [server.model]}
        spec_path = out / "openapi.pinned.json"
        spec_path.write_text(json.dumps(spec))
        per_operation = -(-cases // GENERATION_OPERATIONS)
        (out / "schemathesis.toml").write_text(CONFIG)
        command = ["schemathesis", "--config-file", str(out / "schemathesis.toml"), "run", str(spec_path),
                   "--url", server.url, "--checks", CHECKS,
                   "--max-examples", str(per_operation), "--seed", str(seed), "--phases", phases,
                   "--mode", "all", "--request-timeout", "60", "--continue-on-failure", "--generation-database", "none",
                   "--suppress-health-check", "all", "--no-color", "--report", "ndjson",
                   "--report-ndjson-path", str(out / "events.ndjson"), "--workers", "2"]
        print(" ".join(command), flush=True)
        run = subprocess.run(command, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=3 * 3600)
        (out / "schemathesis.txt").write_text(run.stdout)
        print(run.stdout[-6000:])
        healthy, counts = asyncio.run(_after(server.url))
        print(f"after fuzzing: healthy={healthy} {' '.join(f'{k}={v:g}' for k, v in counts.items())} "
              f"schemathesis exit={run.returncode}")
        clean = counts["status_500"] == counts["restarts"] == counts["status_502"] == 0
        return 0 if run.returncode == 0 and healthy and clean else 1
    finally:
        launcher.close()


async def _get_json(url: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return await response.json()


async def _after(url: str) -> tuple[bool, dict[str, float]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/ready") as response:
            ready = response.status == 200
        states = [w["state"] for w in await workers(http, url)]
        model = (await _get_json(url + "/v1/models"))["data"][0]["id"]
        async with http.post(url + "/v1/completions", json={"model": model, "prompt": "ok", "max_tokens": 3}) as r:
            answered = r.status == 200
        samples = await metrics(http, url)
    counts = {"requests": sum(v for k, v in samples.items() if k.startswith("gpupool_requests_total{"))}
    for status in ("200", "400", "404", "413", "500", "502", "503", "504"):
        counts[f"status_{status}"] = sum(v for k, v in samples.items()
                                         if k.startswith("gpupool_requests_total{") and f'status="{status}"' in k)
    counts["restarts"] = samples.get("gpupool_worker_restarts_total", 0.0)
    counts["bad_frames"] = samples.get("gpupool_bad_frames_total", 0.0)
    return ready and answered and states == ["ready"] * len(states), counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", action="store_true", help="only regenerate router/openapi.json")
    parser.add_argument("--cases", type=int, default=10_000, help="test cases in all (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="logs and reports (default: a temporary directory)")
    parser.add_argument("--phases", default="examples,coverage,fuzzing", help="schemathesis phases (%(default)s)")
    args = parser.parse_args()
    if args.export:
        export()
        return 0
    out = args.out or Path(tempfile.mkdtemp(prefix="gpupool-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    return fuzz(args.cases, args.seed, out.resolve(), args.phases)


if __name__ == "__main__":
    sys.exit(main())
