"""summary.json from locust's outputs, and the SLO verdict that decides `make loadtest`'s exit status."""

from __future__ import annotations

import json

import pytest

from loadtest.summary import (
    Slo,
    _percentile,
    check_slo,
    format_summary,
    read_stats,
    read_stats_json,
    summarise,
    write_summary,
)


def entry(name, times: dict[int, int], failures=0, start=100.0, end=110.0):
    requests = sum(times.values())
    return {"name": name, "method": "POST", "num_requests": requests, "num_failures": failures,
            "num_none_requests": 0, "total_response_time": float(sum(ms * n for ms, n in times.items())),
            "max_response_time": float(max(times)), "min_response_time": float(min(times)),
            "total_content_length": 0, "response_times": {str(k): v for k, v in times.items()},
            "num_reqs_per_sec": {}, "num_fail_per_sec": {}, "start_time": start, "last_request_timestamp": end}


@pytest.fixture
def locust_json(tmp_path):
    prefix = tmp_path / "locust"
    rec = {10: 900, 20: 90, 300: 10}  # 1000 requests: p50 10, p95 20, p99 300 (locust counts the top 1 % in)
    sim = {5: 50, 7: 50}
    (tmp_path / "locust.json").write_text(json.dumps([entry("/recommend", rec, failures=2),
                                                       entry("/similar-items", sim, start=102.0, end=112.0)]))
    return prefix


def test_percentiles_follow_locusts_rule():
    h = {10: 900, 20: 90, 300: 10}
    assert _percentile(h, 1000, 0.50) == 10
    assert _percentile(h, 1000, 0.95) == 20
    assert _percentile(h, 1000, 0.99) == 300  # the 10 slowest are the top 1 %: locust reports their time
    assert _percentile(h, 1000, 0.98) == 20
    assert _percentile(h, 1000, 1.0) == 300
    assert _percentile({}, 0, 0.5) is None


def test_rows_from_the_json(locust_json):
    rows = read_stats_json(f"{locust_json}.json")
    rec = rows["/recommend"]
    assert rec["requests"] == 1000 and rec["failures"] == 2 and rec["error_rate"] == pytest.approx(0.002)
    assert rec["rps"] == pytest.approx(100.0) and rec["p50_ms"] == 10 and rec["max_ms"] == 300
    total = rows["Aggregated"]
    assert total["requests"] == 1100 and total["failures"] == 2
    assert total["rps"] == pytest.approx(1100 / 12.0)  # from the first start to the last request
    assert total["p50_ms"] == 10


def test_summary_and_slo_verdicts(locust_json, tmp_path):
    met = summarise(locust_json, Slo(p99_ms=50, max_error_rate=0.01, min_rps=50), {"host": "h"})
    assert met["slo_met"] and met["host"] == "h" and set(met["endpoints"]) == {"/recommend", "/similar-items"}
    missed = summarise(locust_json, Slo(p99_ms=15, max_error_rate=0.0))
    assert not missed["slo_met"] and [c["met"] for c in missed["slo"]] == [False, False]
    assert summarise(locust_json)["slo"] == [] and summarise(locust_json)["slo_met"]
    path = write_summary(met, tmp_path / "out" / "summary.json")
    assert json.loads(path.read_text())["total"]["requests"] == 1100
    assert "MISSED" in format_summary(missed) and "/similar-items" in format_summary(met)


def test_check_slo_on_missing_percentiles_is_a_miss():
    total = {"p99_ms": None, "p95_ms": None, "error_rate": 0.0, "rps": 0.0}
    assert check_slo(total, Slo(p99_ms=100))[0]["met"] is False
    assert check_slo(total, Slo()) == []


def test_csv_fallback(tmp_path):
    header = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
              "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
              "99.99%,100%")
    rows = ["POST,/recommend,10,1,12,13.5,5,40,300,2.5,0.1,12,13,14,15,20,30,35,40,40,40,40",
            ",Aggregated,10,1,12,13.5,5,40,300,2.5,0.1,12,13,14,15,20,30,35,40,40,40,40"]
    (tmp_path / "run_stats.csv").write_text("\n".join([header, *rows]) + "\n")
    stats = read_stats(tmp_path / "run_stats.csv")
    assert stats["/recommend"]["p99_ms"] == 40 and stats["Aggregated"]["error_rate"] == pytest.approx(0.1)
    summary = summarise(tmp_path / "run", Slo(p95_ms=25))
    assert summary["slo"][0]["measured"] == 30 and not summary["slo_met"]
    (tmp_path / "bad_stats.csv").write_text(header + "\n" + rows[0] + "\n")
    with pytest.raises(ValueError, match="Aggregated"):
        read_stats(tmp_path / "bad_stats.csv")
