"""CI-sized runs of scripts/chaos.py's kill, disconnect, overload and drain scenarios, through the harness itself.

Each extends a test_router_* test: repeated kills under a closed loop of streams (test_router_worker_crash kills
once), drops at random moments including while queued, with an RSS check (test_router_cancel drops 100 mid-stream),
an open-loop overload at 5x what fits (test_router_overload sends one burst), and SIGTERM with requests still waiting
in the router's queue (test_router_shutdown has only running streams). Speed bars (p99s, the 1 s idle deadline) are
held by the script, not asserted here.
"""

from __future__ import annotations

import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

from chaos import disconnect, drain, kill, overload  # noqa: E402
from chaos.report import Options  # noqa: E402


def held(result) -> None:
    print(result.line())
    assert not result.missed(include_timing=False), result.line()


async def test_kill_workers_repeatedly_under_load(start_router):
    result = await kill.run(start_router, Options(model="sim:5", duration=5, scale=0.25))
    held(result)
    assert result.figures["kills"] >= 2 and result.figures["completed"] > 0


async def test_disconnect_storm_frees_everything(start_router):
    result = await disconnect.run(start_router, Options(model="sim:10", scale=0.1))
    held(result)
    assert result.figures["idle_after_last_drop_s"] < 10


async def test_overload_gets_only_200_or_503(start_router):
    result = await overload.run(start_router, Options(model="sim:10", duration=3, scale=0.5))
    held(result)
    assert result.figures["rejected_503"] > 0 and result.figures["ok_200"] > 0


async def test_sigterm_drains_running_and_queued_streams(start_router):
    held(await drain.run(start_router, Options(model="sim:10", scale=0.5)))
