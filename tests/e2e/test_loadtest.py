"""`make loadtest` and `make bench --quick` for real: locust against a served bento, and the benchmark's plumbing.

No timing assertions: these check that the runs complete, write their files, count every endpoint and see no
failures. Both start their own servers (model store, redis-server, `bentoml serve`, for the bench also moto +
MLflow and `mlflow models serve`) on free loopback ports and stop them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.helpers import REPO

pytestmark = pytest.mark.slow

ENDPOINTS = {"/recommend", "/similar-items", "/recommend/history", "/recommend/batch", "/score"}


def run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_loadtest_against_a_served_bento_writes_the_summary(tmp_path):
    out = tmp_path / "run"
    run(["loadtest.run", "--items", "3000", "--random-factors", "--users", "6", "--spawn-rate", "6",
         "--run-time", "12s", "--think-min", "0.05", "--think-max", "0.15", "--out", str(out),
         "--slo-max-error-rate", "0"], timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["endpoints"]) == ENDPOINTS
    for name, row in summary["endpoints"].items():
        assert row["requests"] > 0 and row["failures"] == 0, (name, row)
        assert row["p50_ms"] is not None
    assert summary["total"]["failures"] == 0 and summary["failures"] == []
    assert summary["total"]["requests"] == sum(r["requests"] for r in summary["endpoints"].values())
    assert summary["slo_met"] and summary["slo"][0]["slo"] == "max_error_rate"
    for name in ("locust_stats.csv", "report.html", "locust.json"):
        assert (out / name).stat().st_size > 0


def test_loadtest_exits_one_when_an_slo_is_missed(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "loadtest.run", "--items", "3000", "--random-factors", "--no-cache",
                           "--users", "2", "--spawn-rate", "2", "--run-time", "4s", "--out", str(tmp_path / "r"),
                           "--slo-p99-ms", "0.001"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "MISSED" in proc.stdout


def test_bench_quick_writes_the_report(tmp_path):
    run(["loadtest.bench", "--quick", "--out", str(tmp_path)], timeout=900)
    (md,) = tmp_path.glob("*.md")
    results = json.loads(md.with_suffix(".json").read_text())
    keys = {s["key"] for s in results["sweeps"]}
    assert {"ours-6k-batching-on", "ours-6k-batching-off", "ours-6k-cache-hit", "ours-6k-cache-miss",
            "mlflow-6k-w1", "ours-6k-hold-off", "ours-6k-direct-off"} <= keys
    for context in ("MODEL_CALL_HOLD default / 0", "DIRECT_ANSWERS true / false"):
        assert any(r["name"].startswith(context) and r["value"] for r in results["ratios"]), context
    assert all(s["failures"] == 0 and s["levels"] for s in results["sweeps"])
    assert [r["n_items"] for r in results["core"]] == [10_000]
    # the limit of the served size (6k) is measured beside the served rows, once per level, and is the ratio's base
    assert [r["concurrency"] for r in results["core_alongside"]["readings"]] == [1, 4]
    served = next(r for r in results["ratios"] if r["name"].startswith("served / in-process"))
    assert served["value"] and "beside the served levels" in served["detail"]
    hit = next(s for s in results["sweeps"] if s["key"] == "ours-6k-cache-hit")
    assert all(v["hit_ratio"] > 0.9 for v in hit["extra"]["redis"].values())
    assert "## Headline" in md.read_text()
