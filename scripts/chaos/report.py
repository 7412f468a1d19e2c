"""A scenario's result: its figures, and the bars they are held to, printed as one line."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Check:
    bar: str
    ok: bool
    timing: bool = False  # a speed bar: held by the script, never asserted by the test suite


@dataclass
class Result:
    scenario: str
    figures: dict[str, object] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    series: dict[str, list] = field(default_factory=dict)  # samples over time: in the JSON, not on the line

    def check(self, bar: str, ok: bool, *, timing: bool = False) -> None:
        self.checks.append(Check(bar, bool(ok), timing))

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def missed(self, *, include_timing: bool = True) -> list[str]:
        return [c.bar for c in self.checks if not c.ok and (include_timing or not c.timing)]

    def line(self) -> str:
        figures = " ".join(f"{k}={_fmt(v)}" for k, v in self.figures.items())
        verdict = "PASS" if self.ok else "FAIL (missed: " + "; ".join(self.missed()) + ")"
        return f"{self.scenario}: {verdict} | {figures}"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Options:
    """What every scenario takes: the model, the workers, and how long and how big to run it."""

    model: str = "sim:20"
    devices: str = "cpu,cpu"
    duration: float | None = None  # seconds; None: the scenario's full-length default
    scale: float = 1.0  # multiplies the scenario's client and stream counts
    seed: int = 0

    def seconds(self, default: float) -> float:
        return default if self.duration is None else self.duration

    def count(self, full: int) -> int:
        return max(1, round(full * self.scale))

    def serve_args(self, *extra: str) -> tuple[str, ...]:
        return ("--model", self.model, "--devices", self.devices, *extra)
