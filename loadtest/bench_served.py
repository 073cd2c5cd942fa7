"""Benchmark rows 2–4: servers under the same closed-loop load, level by level, interleaved.

Every server of one catalog size is started first and stays up (idle ones cost nothing measurable); then, for
each concurrency level, each server is measured in turn for ``duration`` seconds after ``warmup`` seconds, the
order rotating from level to level. On a shared machine whose background load drifts, interleaving keeps the
comparison between servers fair: they are measured minutes apart at most, never one whole sweep apart.
Before the first level each server gets a short unmeasured warm-up (connections, caches, and BentoML's
adaptive batching, which learns its latency model from its first dispatches).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loadtest.client import LevelResult, closed_loop

P99_BUDGET_MS = 50.0


@dataclass
class Sweep:
    key: str  # e.g. "ours-50k-batching-on"
    title: str
    server: str  # "bento", "mlflow" or "probe"
    n_items: int
    notes: list[str] = field(default_factory=list)
    levels: list[LevelResult] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def at(self, concurrency: int) -> LevelResult | None:
        return next((r for r in self.levels if r.concurrency == concurrency), None)

    def best_under(self, p99_ms: float = P99_BUDGET_MS) -> LevelResult | None:
        """The level with the most RPS among those with p99 <= the budget and no failures."""
        ok = [r for r in self.levels if r.failures == 0 and r.p99_ms is not None and r.p99_ms <= p99_ms]
        return max(ok, key=lambda r: r.rps, default=None)

    def peak(self) -> LevelResult | None:
        """The level with the most RPS (any latency) among those without failures."""
        return max((r for r in self.levels if r.failures == 0), key=lambda r: r.rps, default=None)

    @property
    def failures(self) -> int:
        return sum(r.failures for r in self.levels)

    def as_dict(self) -> dict[str, Any]:
        best, peak = self.best_under(), self.peak()
        return {"key": self.key, "title": self.title, "server": self.server, "n_items": self.n_items,
                "notes": self.notes, "extra": self.extra, "levels": [r.as_dict() for r in self.levels],
                "best_under_p99_budget": best.as_dict() if best else None, "peak": peak.as_dict() if peak else None,
                "failures": self.failures}


@dataclass
class Target:
    """One sweep's server endpoint and load: ``bodies(c)`` gives the bodies clients cycle through at level c."""

    sweep: Sweep
    url: str
    bodies: Callable[[int], list[bytes]]
    pids: Any = None
    max_level: int | None = None  # levels above it are skipped
    before: Callable[[int], None] | None = None
    after: Callable[[int, LevelResult], None] | None = None


def run_interleaved(targets: list[Target], levels: list[int], duration: float, warmup: float,
                    settle_s: float = 3.0, log=print, alongside: Callable[[int], None] | None = None) -> None:
    """Measure every target at every level (its ``max_level`` allowing), rotating the order per level.

    ``alongside(level)``, when given, runs once per level before the targets (the in-process limit, measured
    between the served rows it is compared with: ``bench_core.LimitProbe``).
    """
    if settle_s > 0:
        for t in targets:
            closed_loop(t.url, t.bodies(0), min(8, max(levels)), settle_s, warmup=0.0)
    for i, c in enumerate(levels):
        if alongside is not None:
            alongside(c)
        shift = i % max(1, len(targets))
        for t in targets[shift:] + targets[:shift]:
            if t.max_level is not None and c > t.max_level:
                continue
            if t.before:
                t.before(c)
            result = closed_loop(t.url, t.bodies(c), c, duration, warmup=warmup, server_pids=t.pids)
            if t.after:
                t.after(c, result)
            t.sweep.levels.append(result)
            log(f"    {t.sweep.key:<28} c={c:<3} {result.rps:8.1f} rps  p50 {_ms(result.p50_ms)}  p99 "
                f"{_ms(result.p99_ms)}  fail {result.failures}  client {result.client_cpu_pct:.0f}%  server "
                f"{_pct(result.server_cpu_pct)}  other {result.other_cpu_pct:.0f}%")
    for t in targets:
        t.sweep.levels.sort(key=lambda r: r.concurrency)


def _ms(v: float | None) -> str:
    return "   -  " if v is None else f"{v:6.1f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}%"
