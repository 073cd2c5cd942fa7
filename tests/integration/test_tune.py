"""`timbral tune`: nested MLflow runs under one parent; the best child is refit, logged and registered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from timbral.params import NMFParams
from training.generate import write_listens
from training.pipeline import TrainConfig
from training.tune import run_tuning

TIMBRAL = str(Path(sys.executable).parent / "timbral")


def _children(client: MlflowClient, experiment: str):
    """The experiment's one parent run and its child runs, in trial order."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    kids = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id),
                  key=lambda r: r.info.run_name)
    return parents[0], kids


@pytest.fixture
def small_listens(tmp_path):
    data = tmp_path / "listens.parquet"
    write_listens(data, n_users=300, n_items=600, n_interactions=8_000, seed=5)
    return data


def test_tune_logs_nested_trials_and_registers_the_best(local_stack, tmp_path):
    data = tmp_path / "listens.parquet"
    write_listens(data, n_users=600, n_items=1200, n_interactions=20_000, seed=4)
    env = {**os.environ, **local_stack.client_env()}
    proc = subprocess.run([TIMBRAL, "tune", "--data", str(data), "--trials", "3", "--max-iter", "30",
                           "--experiment", "tune-it", "--model-name", "tuned-nmf"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(local_stack.tracking_uri)
    parent, children = _children(client, "tune-it")
    assert len(children) == 3
    best = max(children, key=lambda r: r.data.metrics["ndcg_at_10"])
    assert parent.data.tags["best_child_run_id"] == best.info.run_id
    assert parent.data.metrics["best_ndcg_at_10"] == best.data.metrics["ndcg_at_10"]
    version = client.get_model_version_by_alias("tuned-nmf", "champion")
    assert version.version == "1" and version.run_id == best.info.run_id
    assert client.get_run(best.info.run_id).data.tags["final_model"] == "best trial refit on all data"
    assert "Registered tuned-nmf version 1 with alias champion" in proc.stdout


def test_a_trial_whose_penalty_zeroes_the_factors_fails_alone_and_the_search_goes_on(mlflow_env, small_listens):
    cfg = TrainConfig(data=str(small_listens), params=NMFParams(n_components=8, max_iter=30),
                      experiment="tune-degenerate", model_name="tune-degenerate-nmf", promote="always")
    # trial 1 is cfg.params (fits); trials 2 and 3 draw an L1 penalty that zeroes every user factor
    result = run_tuning(cfg, trials=3, space={"alpha_W": [1.0], "l1_ratio": [1.0]}, search="random")
    parent, kids = _children(MlflowClient(mlflow_env.tracking_uri), "tune-degenerate")
    assert [k.info.status for k in kids] == ["FINISHED", "FAILED", "FAILED"]
    for failed in kids[1:]:
        assert "regularisation drove every user factor to zero" in failed.data.tags["trial_error"]
        assert failed.data.params["nmf_alpha_W"] == "1.0"  # the failed trial's knobs stay readable in the UI
        assert "ndcg_at_10" not in failed.data.metrics
    assert parent.data.metrics["failed_trials"] == 2
    assert parent.data.tags["best_child_run_id"] == kids[0].info.run_id
    assert result.version == "1" and result.run_id == kids[0].info.run_id


def test_tune_fails_with_the_reason_when_every_trial_fails(mlflow_env, small_listens):
    cfg = TrainConfig(data=str(small_listens),
                      params=NMFParams(n_components=8, max_iter=30, alpha_W=1.0, l1_ratio=1.0),
                      experiment="tune-all-fail", model_name="tune-all-fail-nmf")
    with pytest.raises(RuntimeError, match=r"all 2 trials failed; trial 1: regularisation drove every user factor"):
        run_tuning(cfg, trials=2, space={"l1_ratio": [1.0]}, search="random")
    client = MlflowClient(mlflow_env.tracking_uri)
    parent, kids = _children(client, "tune-all-fail")
    assert parent.info.status == "FAILED" and [k.info.status for k in kids] == ["FAILED", "FAILED"]
    assert not client.search_registered_models("name='tune-all-fail-nmf'")  # nothing registered
