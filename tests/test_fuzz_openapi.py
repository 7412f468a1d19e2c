"""docs/openapi.yaml is what GET /openapi.json serves, it documents every route the router has, and real responses
have the statuses it lists. (scripts/fuzz_openapi.py fuzzes the live server with schemathesis from it.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import aiohttp
import pytest

from router.app import create_app
from router.config import ServeConfig
from tests.conftest import REPO

yaml = pytest.importorskip("yaml")
SPEC = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())


def test_the_served_copy_is_docs_openapi_yaml():
    served = json.loads((REPO / "router" / "openapi.json").read_text())
    assert served == SPEC, "run: python scripts/fuzz_openapi.py --export"


def test_every_route_is_documented():
    app = create_app(ServeConfig(model="sim:1"))
    routes = {(r.resource.canonical, r.method.lower()) for r in app.router.routes() if r.method != "HEAD"}
    documented = {(path, method) for path, item in SPEC["paths"].items() for method in item}
    assert routes == documented


async def test_the_server_answers_with_documented_statuses(start_router):
    router = start_router("--model", "sim:1", "--devices", "cpu")
    calls = [("get", "/openapi.json", None), ("get", "/health", None), ("get", "/ready", None),
             ("get", "/metrics", None), ("get", "/v1/models", None),
             ("post", "/v1/completions", {"model": router.model, "prompt": "x", "max_tokens": 2}),
             ("post", "/v1/completions", {"model": router.model, "prompt": "x", "max_tokens": 2, "stream": True}),
             ("post", "/v1/chat/completions", {"model": router.model, "messages": [{"role": "user", "content": "x"}],
                                               "max_tokens": 2}),
             ("post", "/v1/completions", {"model": "nope", "prompt": "x"}),
             ("post", "/v1/chat/completions", {"model": router.model, "messages": [], "bogus": 1})]
    async with aiohttp.ClientSession() as session:
        for method, path, body in calls:
            async with session.request(method, router.url + path, json=body) as response:
                documented = SPEC["paths"][path][method]["responses"]
                assert str(response.status) in documented, (path, response.status)
                media = response.content_type
                content = documented[str(response.status)].get("content") or SPEC["components"]["responses"][
                    documented[str(response.status)]["$ref"].rsplit("/", 1)[1]]["content"]
                assert media in content, (path, media)
                if path == "/openapi.json":
                    assert await response.json() == SPEC


@pytest.mark.skipif(shutil.which("schemathesis") is None, reason="schemathesis is not installed (the fuzz extra)")
def test_a_short_schemathesis_run_finds_no_server_error(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "fuzz_openapi.py"), "--cases", "100", "--phases", "fuzzing",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
