"""The benchmark report: headline, ratios against the targets, every row; Markdown and JSON side by side."""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime
from pathlib import Path
from typing import Any

P99_BUDGET_MS = 50.0


def machine_meta() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for dist in ("numpy", "scipy", "bentoml", "mlflow", "aiohttp", "locust"):  # never import locust: it
        try:  # monkey-patches the standard library with gevent on import
            versions[dist] = version(dist)
        except PackageNotFoundError:
            pass
    from loadtest.bench_core import blas_info

    return {"date": datetime.now().strftime("%Y-%m-%d %H:%M"), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "versions": versions, "blas": blas_info(),
            "blas_env": {v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


def end_meta(started: float) -> dict[str, Any]:
    return {"loadavg_end": [round(x, 2) for x in os.getloadavg()], "total_minutes": round((time.perf_counter() - started) / 60, 1)}


# ------------------------------------------------------------------------------------------------- ratios
def _sweep(results: dict, key: str) -> dict | None:
    return next((s for s in results["sweeps"] if s["key"] == key), None)


def _level(sweep: dict | None, c: int) -> dict | None:
    return next((r for r in sweep["levels"] if r["concurrency"] == c), None) if sweep else None


def _best(sweep: dict | None) -> float | None:
    return sweep["best_under_p99_budget"]["rps"] if sweep and sweep["best_under_p99_budget"] else None


def _label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 else str(n)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def limit_of(results: dict, n_items: int) -> tuple[float | None, str]:
    """The in-process limit a served row of ``n_items`` is compared with, and where it comes from.

    The median of the readings taken between the served levels (``bench_core.LimitProbe``) when the run has
    them, else the row-1 figure measured at the start of the run.
    """
    along = results.get("core_alongside")
    if along and along["n_items"] == n_items and along["median_users_per_s"]:
        return along["median_users_per_s"], f"median of {len(along['readings'])} in-process readings beside the served levels"
    row = next((r for r in results["core"] if r["n_items"] == n_items), None)
    return (row["batched_users_per_s"], "measured at the start of the run") if row else (None, "")


def ratios(results: dict) -> list[dict[str, Any]]:
    meta = results["meta"]
    sizes, levels = meta["served_sizes"], meta["levels"]
    small, large, top = _label(sizes[0]), _label(sizes[-1]), max(levels)
    mlflow = [s for s in results["sweeps"] if s["server"] == "mlflow"]
    best_mlflow = max((s for s in mlflow if _best(s) is not None), key=_best, default=mlflow[0] if mlflow else None)
    on_large, off_large = _sweep(results, f"ours-{large}-batching-on"), _sweep(results, f"ours-{large}-batching-off")
    limit, limit_source = limit_of(results, sizes[-1])
    peak_large = on_large["peak"]["rps"] if on_large and on_large["peak"] else None
    on_top, off_top = _level(on_large, top), _level(off_large, top)
    rows = [
        {"name": f"ours / mlflow models serve ({small} items, max RPS at p99 <= {P99_BUDGET_MS:.0f} ms)",
         "value": _ratio(_best(_sweep(results, f"ours-{small}-batching-on")), _best(best_mlflow)), "target": 3.0,
         "detail": f"against {best_mlflow['key']}" if best_mlflow else "mlflow not measured"},
        {"name": f"batching on / off ({large} items, RPS at {top} clients)",
         "value": _ratio(on_top["rps"] if on_top else None, off_top["rps"] if off_top else None), "target": 2.0,
         "detail": ""},
        {"name": f"served / in-process limit ({large} items, peak RPS / batched users/s)",
         "value": _ratio(peak_large, limit), "target": 0.5,
         "detail": f"peak {peak_large:.0f} RPS vs {limit:.0f} users/s ({limit_source})"
         if peak_large and limit else "not measured"},
        {"name": f"cached / uncached ({small} items, max RPS at p99 <= {P99_BUDGET_MS:.0f} ms)",
         "value": _ratio(_best(_sweep(results, f"ours-{small}-cache-hit")), _best(_sweep(results, f"ours-{small}-cache-miss"))),
         "target": 5.0, "detail": ""},
    ]
    batch = _sweep(results, f"ours-{large}-batch-endpoint")
    if batch and batch["peak"]:
        users = batch["peak"]["rps"] * batch["extra"]["users_per_request"]
        rows.append({"name": f"served /recommend/batch users/s / in-process limit ({large} items)",
                     "value": _ratio(users, limit), "target": None,
                     "detail": f"{users:.0f} users/s at {batch['extra']['users_per_request']} users per request",
                     "kind": "info"})
    for suffix, name, detail in (
            ("hold-off", "MODEL_CALL_HOLD default / 0", "the API holding its model-call slot under load, against sending at once"),
            ("direct-off", "DIRECT_ANSWERS true / false", "the direct lane, against every request through BentoML's route")):
        variant = _level(_sweep(results, f"ours-{large}-{suffix}"), top)
        if variant and on_top:
            rows.append({"name": f"{name} ({large} items, RPS at {top} clients)",
                         "value": _ratio(on_top["rps"], variant["rps"]), "target": None, "detail": detail, "kind": "info"})
    probe_small, probe_large = _sweep(results, f"probe-{small}-inprocess"), _sweep(results, f"probe-{large}-inprocess")
    if probe_small and best_mlflow:
        rows.append({"name": f"probe (scoring in the API process) / mlflow models serve ({small} items, max RPS at "
                             f"p99 <= {P99_BUDGET_MS:.0f} ms)", "value": _ratio(_best(probe_small), _best(best_mlflow)),
                     "target": None, "detail": "what removing the API→model hop would give", "kind": "info"})
    if probe_large and probe_large["peak"] and limit:
        rows.append({"name": f"probe peak RPS / in-process limit ({large} items)",
                     "value": _ratio(probe_large["peak"]["rps"], limit), "target": None,
                     "detail": "", "kind": "info"})
    failures = sum(s["failures"] for s in results["sweeps"])
    rows.append({"name": "non-2xx answers or errors, all levels, all servers", "value": float(failures), "target": 0.0,
                 "detail": "", "kind": "count"})
    for row in rows:
        if row.get("kind") == "count":
            row["met"] = row["value"] == 0
        elif row.get("kind") == "info":
            row["met"] = None
        else:
            row["met"] = row["value"] is not None and row["value"] >= row["target"]
    return rows


# ------------------------------------------------------------------------------------------------- output
def _f(v, fmt="{:.0f}") -> str:
    return "—" if v is None else fmt.format(v)


def headline_rows(results: dict) -> list[str]:
    lines = [f"| server | max RPS with p99 ≤ {P99_BUDGET_MS:.0f} ms | at clients | p50 ms | p99 ms | "
             "peak RPS (any p99) | non-2xx |", "|---|---:|---:|---:|---:|---:|---:|"]
    for s in results["sweeps"]:
        best, peak = s["best_under_p99_budget"], s["peak"]
        lines.append(f"| {s['title']} | {_f(best and best['rps'])} | {_f(best and best['concurrency'])} | "
                     f"{_f(best and best['p50_ms'], '{:.1f}')} | {_f(best and best['p99_ms'], '{:.1f}')} | "
                     f"{_f(peak and peak['rps'])} (c={_f(peak and peak['concurrency'])}) | {s['failures']} |")
    return lines


def ratio_rows(results: dict) -> list[str]:
    lines = ["| ratio | measured | target | |", "|---|---:|---:|---|"]
    for r in results["ratios"]:
        if r.get("kind") == "count":
            value, target = _f(r["value"]), "0"
        elif r.get("kind") == "info":
            value, target = _f(r["value"], "{:.2f}×"), "(context)"
        else:
            value, target = _f(r["value"], "{:.2f}×"), f"≥ {r['target']:g}×"
        verdict = "" if r["met"] is None else "met" if r["met"] else "**missed**"
        lines.append(f"| {r['name']} | {value} | {target} | {verdict}{' — ' + r['detail'] if r['detail'] else ''} |")
    return lines


def core_rows(results: dict) -> list[str]:
    lines = ["| items | batched users/s (64 per call) | users per CPU-second | naive product+argpartition users/s | "
             "core / naive | 64-user call p50 ms | single user p50 / p99 ms | single users/s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["core"]:
        naive = r.get("naive_batched_users_per_s")
        lines.append(f"| {r['n_items']:,} | {r['batched_users_per_s']:,.0f} | {r['batched_users_per_cpu_s']:,.0f} | "
                     f"{_f(naive, '{:,.0f}')} | {_f(_ratio(r['batched_users_per_s'], naive), '{:.2f}×')} | "
                     f"{r['batch_ms_p50']:.1f} | {r['single_ms_p50']:.2f} / {r['single_ms_p99']:.2f} | "
                     f"{r['single_users_per_s']:,.0f} |")
    along = results.get("core_alongside")
    if along and along["readings"]:
        readings = ", ".join(f"c={r['concurrency']}: {r['batched_users_per_s']:,.0f}" for r in along["readings"])
        lines += ["", f"Measured again beside the served rows of {along['n_items']:,} items, once per load level before "
                  f"the servers (batches of {along['batch']}, users/s): {readings}; median "
                  f"{along['median_users_per_s']:,.0f}. The served / in-process ratio divides by this median."]
    return lines


def sweep_rows(sweep: dict) -> list[str]:
    lines = [f"**{sweep['title']}** (`{sweep['key']}`) — {'; '.join(sweep['notes'])}", "",
             "| clients | RPS | p50 ms | p90 ms | p99 ms | non-2xx / errors | client CPU | server CPU | other CPU | "
             "server CPU ms per request |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in sweep["levels"]:
        per = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["cpu_ms_per_request"].items()) if v >= 0.005)
        lines.append(f"| {r['concurrency']} | {r['rps']:,.1f} | {_f(r['p50_ms'], '{:.1f}')} | {_f(r['p90_ms'], '{:.1f}')} | "
                     f"{_f(r['p99_ms'], '{:.1f}')} | {r['failures']} | {_f(r['client_cpu_pct'])}% | "
                     f"{_f(r['server_cpu_pct'])}% | {_f(r['other_cpu_pct'])}% | {per} |")
    if sweep["extra"].get("redis"):
        ratios = ", ".join(f"c={k.split(':')[1]}: {v['hit_ratio']:.3f}" for k, v in sweep["extra"]["redis"].items())
        lines += ["", f"Redis hit ratio per level (keyspace hits / lookups): {ratios}"]
    return lines


def command_of(meta: dict) -> str:
    """The command that produced the report: ``make bench``, or the module with the arguments it was given."""
    import shlex

    argv = meta.get("argv")
    if argv is None:  # reports written before the arguments were recorded
        return "make bench" + (" (--quick)" if meta.get("quick") else "")
    return "make bench" if not argv else f"python -m loadtest.bench {shlex.join(argv)}"


def markdown(results: dict) -> str:
    m = results["meta"]
    levels = [r for s in results["sweeps"] for r in s["levels"]]
    client_max = max((r["client_cpu_pct"] for r in levels), default=None)
    other = sorted(r["other_cpu_pct"] for r in levels)
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    blas = "; ".join(f"{b.get('internal_api')} {b.get('version')} threads={b.get('num_threads')}" for b in m["blas"])
    out = [
        f"# Timbral serving benchmark — {m['date']}", "",
        f"`{command_of(m)}` on {m['cpu']}, {m['cores']} cores; "
        f"load average {m['loadavg_start']} at start, {m['loadavg_end']} at end; {m['total_minutes']} min in all.",
        f"Python {m['python']}; {versions}.",
        f"BLAS pinned: {blas}; env {m['blas_env']}; the model service runs with BLAS_THREADS=1.",
        f"Load: closed-loop clients (asyncio + aiohttp, one process, keep-alive), POST /recommend k=10 for known "
        f"users drawn Zipf-skewed from the model's ids (the peer gets the same users in its /invocations format); "
        f"levels {m['levels']} clients, {m['duration_s']:g} s measured after {m['warmup_s']:g} s warm-up each. "
        f"The client used at most {_f(client_max)} % of one core at any level.",
        f"Other processes on the machine used {_f(other[len(other) // 2] if other else None)} % of one core "
        f"(median over levels; max {_f(other[-1] if other else None)} %): figures are from a shared machine.",
        "", "Models: " + "; ".join(f"{x['n_items']:,} items — {x['spec']}" for x in m["models"]), "",
        "## Headline", "", *headline_rows(results), "", *ratio_rows(results), "",
        "## 1. Physical limit: the core in-process (one core, one BLAS thread)", "",
        "Random non-negative float32 factors (honest for speed), 40 seen items excluded per user, k = 10. "
        "`recommend_vectors` is the call the model service makes.", "", *core_rows(results), "",
        "## 2–4. Served: batching on/off, the peer, the cache", "",
        "CPU columns are % of one core during the measured window (client = the load generator process). "
        "'server CPU ms per request' divides each server process's CPU time by the 2xx answers: the cost of one "
        "request in the API process and in the model process.", "",
    ]
    for s in results["sweeps"]:
        out += [*sweep_rows(s), ""]
    if m.get("notes"):
        out += ["## Notes", "", *[f"- {n}" for n in m["notes"]], ""]
    return "\n".join(out)


def headline_text(results: dict) -> str:
    return "\n".join([*headline_rows(results), "", *ratio_rows(results)])


def write(results: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = datetime.now().strftime("%Y-%m-%d") + ("-quick" if results["meta"]["quick"] else "")
    md, js = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    n = 2
    while md.exists() or js.exists():
        md, js = out_dir / f"{stem}-{n}.md", out_dir / f"{stem}-{n}.json"
        n += 1
    js.write_text(json.dumps(results, indent=2, sort_keys=True, default=float))
    md.write_text(markdown(results))
    return md, js
