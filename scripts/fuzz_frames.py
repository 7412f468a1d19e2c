"""Send malformed msgpack/ZeroMQ frames to a worker and to a live router's sockets.

    python scripts/fuzz_frames.py                 # 10k+ frames to each target
    python scripts/fuzz_frames.py --frames 2000   # fewer

Worker: a real `python -m gpu_worker --model sim:1` driven by this script's own ROUTER and PULL sockets (only the
router can address a worker's DEALER). Router: a real `gpupool serve --model sim:2`, its output (PULL) socket fed by
a PUSH of ours and its request (ROUTER) socket by a DEALER. Frames: random bytes, random msgpack, truncated frames,
huge length headers, wrong versions, unknown types, wrong field types, bit flips, deep nesting, messages meant for
the other side, multi-part messages; plus well-formed frames the receivers must drop without counting them as bad:
stale epochs, unknown request ids, and (to the worker) well-typed requests with absurd values.

Bars: no crash; every bad frame counted (the worker's count in its stats; the router's in gpupool_bad_frames_total);
serving continues (a request completes afterwards).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fuzz_targets import fuzz_router, fuzz_worker  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10_000, help="bad frames per target (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--target", choices=["worker", "router", "both"], default="both")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="gpupool-fuzz-frames-"))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    if args.target in ("worker", "both"):
        results.append(fuzz_worker(args.frames, random.Random(args.seed), out))
    if args.target in ("router", "both"):
        results.append(fuzz_router(args.frames, random.Random(args.seed + 1), out))
    for result in results:
        print(result.line(), flush=True)
    print(f"logs in {out}", file=sys.stderr)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
