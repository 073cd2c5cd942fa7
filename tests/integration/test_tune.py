"""`timbral tune`: nested MLflow runs under one parent; the best child is refit, logged and registered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from training.generate import write_listens

TIMBRAL = str(Path(sys.executable).parent / "timbral")


def test_tune_logs_nested_trials_and_registers_the_best(local_stack, tmp_path):
    data = tmp_path / "listens.parquet"
    write_listens(data, n_users=600, n_items=1200, n_interactions=20_000, seed=4)
    env = {**os.environ, **local_stack.client_env()}
    proc = subprocess.run([TIMBRAL, "tune", "--data", str(data), "--trials", "3", "--max-iter", "30",
                           "--experiment", "tune-it", "--model-name", "tuned-nmf"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(local_stack.tracking_uri)
    exp = client.get_experiment_by_name("tune-it")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 3
    best = max(children, key=lambda r: r.data.metrics["ndcg_at_10"])
    assert parents[0].data.tags["best_child_run_id"] == best.info.run_id
    assert parents[0].data.metrics["best_ndcg_at_10"] == best.data.metrics["ndcg_at_10"]
    version = client.get_model_version_by_alias("tuned-nmf", "champion")
    assert version.version == "1" and version.run_id == best.info.run_id
    assert client.get_run(best.info.run_id).data.tags["final_model"] == "best trial refit on all data"
    assert "Registered tuned-nmf version 1 with alias champion" in proc.stdout
