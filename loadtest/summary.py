"""``summary.json`` from locust's statistics, and the SLO verdict of a load-test run.

The source is locust's ``--json-file`` output (``<prefix>.json``), written once at the very end, with each
endpoint's response-time histogram: percentiles and rates are computed from it, so they are final. Locust's
``<prefix>_stats.csv`` is kept for people and used only when the JSON is missing; it is rewritten every second
while locust runs, so its last version can miss the final second.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AGGREGATED = "Aggregated"


@dataclass
class Slo:
    p99_ms: float | None = None
    p95_ms: float | None = None
    max_error_rate: float | None = None  # failures / requests, 0..1
    min_rps: float | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.p99_ms, self.p95_ms, self.max_error_rate, self.min_rps))


def _number(value: str) -> float | None:
    value = (value or "").strip()
    if value in ("", "N/A"):
        return None
    return float(value)


def read_stats(stats_csv: str | Path) -> dict[str, dict[str, Any]]:
    """Rows of ``<prefix>_stats.csv`` by name: requests, failures, error_rate, rps, p50/p95/p99/avg/max ms."""
    rows: dict[str, dict[str, Any]] = {}
    with open(stats_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            name = row["Name"]
            requests = int(row["Request Count"])
            failures = int(row["Failure Count"])
            rows[name] = {
                "method": row.get("Type") or None,
                "requests": requests,
                "failures": failures,
                "error_rate": failures / requests if requests else 0.0,
                "rps": _number(row["Requests/s"]) or 0.0,
                "p50_ms": _number(row["50%"]),
                "p95_ms": _number(row["95%"]),
                "p99_ms": _number(row["99%"]),
                "avg_ms": _number(row["Average Response Time"]),
                "max_ms": _number(row["Max Response Time"]),
            }
    if AGGREGATED not in rows:
        raise ValueError(f"{stats_csv}: no '{AGGREGATED}' row; is this a locust _stats.csv?")
    return rows


def read_failures(failures_csv: str | Path) -> list[dict[str, Any]]:
    path = Path(failures_csv)
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return [{"method": r.get("Method"), "name": r.get("Name"), "error": r.get("Error"),
                 "occurrences": int(r.get("Occurrences") or 0)} for r in csv.DictReader(fh)]


def _percentile(histogram: dict[int, int], count: int, q: float) -> float | None:
    """The response time (ms) within which a fraction ``q`` of ``count`` requests finished (locust's rule:
    walking down from the slowest, the first time at which ``count - int(count * q)`` requests are counted)."""
    if count <= 0 or not histogram:
        return None
    needed = count - int(count * q)
    slower = 0
    for ms in sorted(histogram, reverse=True):
        slower += histogram[ms]
        if slower >= needed:
            return float(ms)
    return float(min(histogram))


def _row(requests: int, failures: int, histogram: dict[int, int], total_ms: float, max_ms: float | None,
         seconds: float, method: str | None) -> dict[str, Any]:
    return {"method": method, "requests": requests, "failures": failures,
            "error_rate": failures / requests if requests else 0.0, "rps": requests / seconds if seconds > 0 else 0.0,
            "p50_ms": _percentile(histogram, requests, 0.50), "p95_ms": _percentile(histogram, requests, 0.95),
            "p99_ms": _percentile(histogram, requests, 0.99), "avg_ms": total_ms / requests if requests else None,
            "max_ms": max_ms}


def read_stats_json(path: str | Path) -> dict[str, dict[str, Any]]:
    """Rows like ``read_stats``, from locust's ``--json-file`` output (a list of serialised StatsEntry)."""
    entries = json.loads(Path(path).read_text())
    rows: dict[str, dict[str, Any]] = {}
    merged: dict[int, int] = {}
    total = {"requests": 0, "failures": 0, "total_ms": 0.0, "max_ms": None, "start": None, "end": None}
    for e in entries:
        histogram = {int(float(k)): int(v) for k, v in (e.get("response_times") or {}).items()}
        start, end = e.get("start_time"), e.get("last_request_timestamp") or e.get("start_time")
        seconds = max((end or 0) - (start or 0), 1e-9)
        requests, failures = int(e["num_requests"]), int(e["num_failures"])
        rows[e["name"]] = _row(requests, failures, histogram, float(e.get("total_response_time") or 0.0),
                               e.get("max_response_time"), seconds, e.get("method"))
        for ms, n in histogram.items():
            merged[ms] = merged.get(ms, 0) + n
        total["requests"] += requests
        total["failures"] += failures
        total["total_ms"] += float(e.get("total_response_time") or 0.0)
        total["max_ms"] = max(filter(None, [total["max_ms"], e.get("max_response_time")]), default=None)
        total["start"] = min(filter(None, [total["start"], start]), default=None)
        total["end"] = max(filter(None, [total["end"], end]), default=None)
    seconds = max((total["end"] or 0) - (total["start"] or 0), 1e-9)
    rows[AGGREGATED] = _row(total["requests"], total["failures"], merged, total["total_ms"], total["max_ms"],
                            seconds, None)
    return rows


def check_slo(total: dict[str, Any], slo: Slo) -> list[dict[str, Any]]:
    """One entry per SLO given: name, limit, measured value and whether it was met (on the aggregate row)."""
    checks = []

    def add(name: str, limit: float | None, value: float | None, ok) -> None:
        if limit is not None:
            checks.append({"slo": name, "limit": limit, "measured": value, "met": value is not None and ok(value, limit)})

    add("p99_ms", slo.p99_ms, total["p99_ms"], lambda v, lim: v <= lim)
    add("p95_ms", slo.p95_ms, total["p95_ms"], lambda v, lim: v <= lim)
    add("max_error_rate", slo.max_error_rate, total["error_rate"], lambda v, lim: v <= lim)
    add("min_rps", slo.min_rps, total["rps"], lambda v, lim: v >= lim)
    return checks


def summarise(prefix: str | Path, slo: Slo | None = None, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of the run whose CSVs start with ``prefix``: per endpoint, the total, the SLO checks."""
    prefix = str(prefix)
    rows = read_stats_json(f"{prefix}.json") if Path(f"{prefix}.json").exists() else read_stats(f"{prefix}_stats.csv")
    total = rows.pop(AGGREGATED)
    checks = check_slo(total, slo or Slo())
    return {
        "endpoints": rows,
        "total": total,
        "failures": read_failures(f"{prefix}_failures.csv"),
        "slo": checks,
        "slo_met": all(c["met"] for c in checks),
        **(context or {}),
    }


def write_summary(summary: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True))
    return path


def format_summary(summary: dict[str, Any]) -> str:
    """A short table for the terminal."""
    lines = [f"{'endpoint':<22}{'requests':>10}{'fail':>7}{'rps':>9}{'p50':>8}{'p95':>8}{'p99':>8}  (ms)"]

    def fmt(v):
        return "-" if v is None else f"{v:.0f}"

    for name, r in [*sorted(summary["endpoints"].items()), ("total", summary["total"])]:
        lines.append(f"{name:<22}{r['requests']:>10}{r['failures']:>7}{r['rps']:>9.1f}{fmt(r['p50_ms']):>8}"
                     f"{fmt(r['p95_ms']):>8}{fmt(r['p99_ms']):>8}")
    for c in summary["slo"]:
        lines.append(f"SLO {c['slo']} <= {c['limit']}: measured {c['measured']} -> {'met' if c['met'] else 'MISSED'}"
                     if c["slo"] != "min_rps" else
                     f"SLO {c['slo']} >= {c['limit']}: measured {c['measured']} -> {'met' if c['met'] else 'MISSED'}")
    return "\n".join(lines)
