"""scripts/fuzz_frames.py at CI size: malformed frames to a real worker and to a live router's sockets are each
counted as bad and dropped, well-typed requests with absurd values are refused with a 400, and serving goes on."""

from __future__ import annotations

import random
import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

from fuzz_targets import fuzz_router, fuzz_worker  # noqa: E402


def test_a_worker_counts_and_drops_malformed_frames_and_refuses_absurd_requests(tmp_path):
    result = fuzz_worker(1000, random.Random(1), tmp_path)
    print(result.line())
    assert result.ok, result.line()
    assert result.figures["worker_counted"] == 1000
    assert result.figures["absurd_rejected"] > 0


def test_the_router_counts_and_drops_malformed_frames_on_both_sockets(tmp_path):
    result = fuzz_router(1000, random.Random(2), tmp_path)
    print(result.line())
    assert result.ok, result.line()
    assert result.figures["router_counted"] == 1000
