"""Chaos scenarios against a real `gpupool serve` (2 workers): each prints one line of figures and the run exits
non-zero if any figure misses its bar.

    python scripts/chaos.py                         # every scenario at full length (about 20 minutes)
    python scripts/chaos.py kill drain              # some of them
    python scripts/chaos.py soak --duration 60      # shortened: say so wherever its figures are quoted
    python scripts/chaos.py kill --model builtin --scale 0.25

Traffic goes to 127.0.0.1 only; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import event_loop  # noqa: E402  (the packages beside this file)
from chaos.report import Options  # noqa: E402
from chaos.server import Launcher  # noqa: E402

SCENARIOS = {  # name: module; full-length order
    "kill": "chaos.kill",
    "disconnect": "chaos.disconnect",
    "overload": "chaos.overload",
    "drain": "chaos.drain",
    "slow-reader": "chaos.slow_reader",
    "hung": "chaos.hung",
    "soak": "chaos.soak",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", choices=[*SCENARIOS, []], help="default: all")
    parser.add_argument("--model", default="sim:20", help="sim:MS or builtin (default: %(default)s)")
    parser.add_argument("--devices", default="cpu,cpu")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds for each timed scenario (default: each one's full length)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies client and stream counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--log-dir", type=Path, default=None, help="server logs (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.duration is not None and args.duration <= 0 or args.scale <= 0:
        parser.error("--duration and --scale must be > 0")
    options = Options(args.model, args.devices, args.duration, args.scale, args.seed)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="gpupool-chaos-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.scenarios or list(SCENARIOS):
        launcher = Launcher(log_dir / name)
        (log_dir / name).mkdir(exist_ok=True)
        began = time.monotonic()
        try:
            result = event_loop.run(importlib.import_module(SCENARIOS[name]).run(launcher, options))
        finally:
            launcher.close()
        result.figures["wall_s"] = round(time.monotonic() - began, 1)
        print(result.line(), flush=True)
        results.append(result)
    if args.json is not None:
        args.json.write_text(json.dumps([{"scenario": r.scenario, "ok": r.ok, "figures": r.figures,
                                          "missed": r.missed(), **r.series} for r in results], indent=2, default=str))
    print(f"logs in {log_dir}", file=sys.stderr)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
