"""What `timbral train` and `make demo` print at the end: metrics beside the baseline, the version, a sample."""

from __future__ import annotations

from rich.console import Console

from training.pipeline import TrainResult
from training.report import print_result


def _result(**overrides) -> TrainResult:
    fields = dict(run_id="abc123", model_name="timbral-nmf", version="3", alias="challenger",
                  gate_reason="ndcg_at_10 0.1800 < champion's 0.1900", metrics={"ndcg_at_10": 0.18, "recall_at_10": 0.2},
                  baseline_metrics={"baseline_ndcg_at_10": 0.09, "baseline_recall_at_10": 0.1}, model_uri="runs:/abc123/model",
                  n_users=800, n_items=2000, n_interactions=40000, fit_seconds=1.5, sample_user="user_00042",
                  sample_recommendations=[(f"artist_{i:05d}_with_a_long_name", 0.9 - i / 10) for i in range(5)])
    fields.update(overrides)
    return TrainResult(**fields)


def _printed(result: TrainResult, width: int = 60) -> str:
    console = Console(width=width, record=True, color_system=None)
    print_result(result, console)
    return console.export_text()


def test_metrics_sit_beside_the_baseline_with_their_ratio():
    out = _printed(_result())
    ndcg = next(line for line in out.splitlines() if "ndcg@10" in line)
    assert "0.1800" in ndcg and "0.0900" in ndcg and "2.00×" in ndcg


def test_the_registered_version_alias_and_gate_reason_are_named():
    out = _printed(_result(), width=200)
    assert "Registered timbral-nmf version 3 with alias challenger (ndcg_at_10 0.1800 < champion's 0.1900)" in out


def test_an_unregistered_model_names_its_uri():
    out = _printed(_result(version=None), width=200)
    assert "Logged model runs:/abc123/model (not registered)" in out


def test_every_sample_item_id_is_printed_whole_on_a_narrow_terminal():
    out = _printed(_result(), width=60)
    assert "Top 5 for user user_00042" in out
    lines = out.splitlines()
    for rank, (item, score) in enumerate(_result().sample_recommendations, 1):
        row = next(line for line in lines if item in line)  # not split across two lines
        cells = [cell.strip() for cell in row.strip("│ ").split("│")]
        assert cells == [str(rank), item, f"{score:.3f}"]
