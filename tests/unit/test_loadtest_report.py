"""The benchmark's client, sweep bookkeeping, ratios and report files — on a local stub server, no bento."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loadtest import bench_report
from loadtest.bench_core import LimitProbe, measure_catalog, naive_topk
from loadtest.bench_served import Sweep
from loadtest.client import LevelResult, closed_loop, latency_stats, post_all


class Stub(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 500 if b"fail" in body else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def stub_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/recommend"
    server.shutdown()


def test_closed_loop_counts_answers_statuses_and_cpu(stub_url):
    result = closed_loop(stub_url, [b'{"ok": 1}', b'{"fail": 1}'], concurrency=4, duration=0.6, warmup=0.1)
    assert result.requests > 10 and result.ok > 0
    assert result.statuses == {"500": result.requests - result.ok}  # every other body fails
    assert result.failures == result.requests - result.ok and result.rps == pytest.approx(result.ok / 0.6)
    assert result.p50_ms is not None and result.p99_ms >= result.p50_ms
    assert result.client_cpu_pct is not None and result.server_cpu_pct is None
    assert post_all(stub_url, [b"{}"] * 5 + [b'"fail"'], concurrency=2) == {200: 5, 500: 1}


def test_latency_stats():
    stats = latency_stats([0.001] * 98 + [0.1, 0.2])
    assert stats["p50_ms"] == pytest.approx(1.0) and stats["max_ms"] == pytest.approx(200.0)
    assert latency_stats([])["p99_ms"] is None


def level(c, rps, p99, failures=0):
    return LevelResult(concurrency=c, seconds=1.0, requests=int(rps), ok=int(rps), rps=rps, p50_ms=p99 / 2,
                       p99_ms=p99, statuses={"503": failures} if failures else {}, client_cpu_pct=5.0,
                       server_cpu_pct=150.0, other_cpu_pct=1.0, cpu_ms_per_request={"api": 1.0, "model": 2.0})


def sweep(key, server, n, levels):
    s = Sweep(key, key, server, n, notes=["n"])
    s.levels = levels
    return s


def results():
    sweeps = [
        sweep("ours-50k-batching-on", "bento", 50_000, [level(1, 100, 10), level(16, 900, 40), level(64, 1200, 90)]),
        sweep("ours-50k-batching-off", "bento", 50_000, [level(1, 90, 12), level(16, 300, 80), level(64, 310, 300)]),
        sweep("ours-200k-batching-on", "bento", 200_000, [level(1, 50, 20), level(64, 600, 120)]),
        sweep("ours-200k-batching-off", "bento", 200_000, [level(1, 45, 22), level(64, 200, 400, failures=3)]),
        sweep("ours-50k-cache-hit", "bento", 50_000, [level(16, 3000, 10)]),
        sweep("ours-50k-cache-miss", "bento", 50_000, [level(16, 700, 45)]),
        sweep("mlflow-50k-w2", "mlflow", 50_000, [level(1, 80, 15), level(16, 200, 49), level(64, 210, 300)]),
    ]
    meta = {"served_sizes": [50_000, 200_000], "levels": [1, 16, 64], "quick": False, "date": "d", "cpu": "cpu",
            "cores": 2, "loadavg_start": [0, 0, 0], "loadavg_end": [0, 0, 0], "total_minutes": 1.0, "python": "3",
            "versions": {"numpy": "2"}, "blas": [], "blas_env": {}, "duration_s": 1, "warmup_s": 1,
            "models": [{"n_items": 50_000, "spec": "s"}], "notes": ["a note"]}
    core = [{"n_items": 200_000, "factors": 64, "batch": 64, "k": 10, "batched_users_per_s": 2000.0,
             "batched_users_per_cpu_s": 2100.0, "batch_ms_p50": 30.0, "single_ms_p50": 3.0, "single_ms_p99": 4.0,
             "single_users_per_s": 300.0, "naive_batched_users_per_s": 1000.0}]
    return {"meta": meta, "core": core, "sweeps": [s.as_dict() for s in sweeps]}


def test_sweep_best_under_the_p99_budget_and_peak():
    s = sweep("x", "bento", 1, [level(1, 100, 10), level(16, 900, 40), level(64, 1200, 90), level(128, 1300, 30, 1)])
    assert s.best_under().concurrency == 16  # 64 is faster but misses 50 ms; 128 had a failure
    assert s.peak().concurrency == 64 and s.failures == 1 and s.at(16).rps == 900
    assert s.as_dict()["best_under_p99_budget"]["rps"] == 900


def test_ratios_against_the_targets():
    res = results()
    by_name = {r["name"].split(" (")[0]: r for r in bench_report.ratios(res)}
    assert by_name["ours / mlflow models serve"]["value"] == pytest.approx(900 / 200)
    assert by_name["ours / mlflow models serve"]["met"]
    assert by_name["batching on / off"]["value"] == pytest.approx(600 / 200) and by_name["batching on / off"]["met"]
    assert by_name["served / in-process limit"]["value"] == pytest.approx(600 / 2000)
    assert not by_name["served / in-process limit"]["met"]
    assert by_name["cached / uncached"]["value"] == pytest.approx(3000 / 700) and not by_name["cached / uncached"]["met"]
    failures = next(r for r in bench_report.ratios(res) if r.get("kind") == "count")
    assert failures["value"] == 3 and not failures["met"]


def test_served_ratio_divides_by_the_limit_measured_beside_the_served_rows(tmp_path):
    res = results()
    res["core_alongside"] = {"n_items": 200_000, "batch": 64, "median_users_per_s": 1000.0,
                             "readings": [{"concurrency": 1, "batched_users_per_s": 900.0},
                                          {"concurrency": 64, "batched_users_per_s": 1000.0}]}
    served = next(r for r in bench_report.ratios(res) if r["name"].startswith("served / in-process"))
    assert served["value"] == pytest.approx(600 / 1000) and served["met"]  # 600 / 2000 (start of the run) misses
    assert "beside the served levels" in served["detail"]
    res["ratios"] = bench_report.ratios(res)
    md, _ = bench_report.write(res, tmp_path)
    assert "c=1: 900, c=64: 1,000; median 1,000" in md.read_text()
    # readings of another size are not this ratio's denominator
    res["core_alongside"]["n_items"] = 50_000
    served = next(r for r in bench_report.ratios(res) if r["name"].startswith("served / in-process"))
    assert served["value"] == pytest.approx(600 / 2000) and "start of the run" in served["detail"]


def test_limit_probe_keeps_a_reading_per_call():
    probe = LimitProbe(3000, factors=8, batch=16)
    assert probe.measure(0.05, concurrency=4) > 0 and probe.measure(0.05, concurrency=16) > 0
    out = probe.as_dict()
    assert [r["concurrency"] for r in out["readings"]] == [4, 16] and out["n_items"] == 3000
    assert min(r["batched_users_per_s"] for r in out["readings"]) <= out["median_users_per_s"]
    assert LimitProbe(3000, factors=8).as_dict()["median_users_per_s"] is None


def test_report_files(tmp_path):
    res = results()
    res["ratios"] = bench_report.ratios(res)
    md, js = bench_report.write(res, tmp_path)
    md2, _ = bench_report.write(res, tmp_path)
    assert md != md2 and md2.name.endswith("-2.md")  # a second run the same day does not overwrite the first
    text = md.read_text()
    for needle in ("## Headline", "## 1. Physical limit", "**missed**", "ours-200k-batching-off", "a note", "2,000"):
        assert needle in text
    assert json.loads(js.read_text())["ratios"][0]["target"] == 3.0
    assert "`make bench (--quick)`" not in text and "`make bench` on cpu" in text  # no argv recorded: the default


def test_the_report_names_the_command_that_produced_it(tmp_path):
    res = results()
    res["ratios"] = bench_report.ratios(res)
    for argv, expected in (([], "`make bench` on cpu"),
                           (["--served-sizes", "200000", "--levels", "1,64", "--skip-mlflow"],
                            "`python -m loadtest.bench --served-sizes 200000 --levels 1,64 --skip-mlflow` on cpu")):
        res["meta"]["argv"] = argv
        md, _ = bench_report.write(res, tmp_path / str(len(argv)))
        assert expected in md.read_text()


def test_core_measurement_is_exact_and_small():
    row = measure_catalog(5000, factors=8, seconds=0.05)
    assert row["batched_users_per_s"] > 0 and row["single_ms_p50"] > 0 and row["naive_batched_users_per_s"] > 0
    import numpy as np

    rng = np.random.default_rng(0)
    items, users = rng.random((300, 4)), rng.random((3, 4))
    seen = [np.array([0, 1]), np.array([], dtype=np.int64), np.array([5])]
    got = naive_topk(users, items, 5, seen)
    scores = users @ items.T
    for r, s in enumerate(seen):
        scores[r, s] = -np.inf
    np.testing.assert_array_equal(got, np.argsort(-scores, axis=1, kind="stable")[:, :5])
