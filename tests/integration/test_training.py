"""`timbral train|promote|rollback` against a real mlflow server with S3 artifacts on a moto server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from timbral.nmf import NMFRecommender
from timbral.params import NMFParams
from training.generate import write_listens
from training.local_stack import LocalStack

TIMBRAL = str(Path(sys.executable).parent / "timbral")
MODEL = "timbral-nmf-it"


def timbral(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([TIMBRAL, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"timbral {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def listens(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "listens.parquet"
    write_listens(path, n_users=1500, n_items=2500, n_interactions=60_000, seed=3)
    return path


@pytest.fixture(scope="module")
def trained(local_stack, listens):
    """Version 1 (a good model) and version 2 (a deliberately poor one) of the same registered model."""
    env = local_stack.client_env()
    good = timbral("train", "--data", str(listens), "--model-name", MODEL, "--experiment", "it", "--components", "32",
                   "--max-iter", "100", env=env)
    poor = timbral("train", "--data", str(listens), "--model-name", MODEL, "--experiment", "it", "--components", "1",
                   "--max-iter", "5", "--weighting", "raw", env=env)
    return good, poor


@pytest.fixture
def client(mlflow_env) -> MlflowClient:
    return MlflowClient(mlflow_env.tracking_uri)


def test_run_logs_params_metrics_dataset_plots_and_model(trained, client):
    version = client.get_model_version(MODEL, "1")
    run = client.get_run(version.run_id)
    metrics = run.data.metrics
    for k in (5, 10, 20):
        for name in ("precision", "recall", "ndcg", "map", "hit_rate", "coverage"):
            assert f"{name}_at_{k}" in metrics
            assert f"baseline_{name}_at_{k}" in metrics
    assert metrics["ndcg_at_10"] > metrics["baseline_ndcg_at_10"]
    params = run.data.params
    assert params["nmf_n_components"] == "32" and params["split_strategy"] == "temporal"
    assert params["refit_on_all_data"] == "True"
    assert run.data.tags["final_model"].startswith("refit on all data")
    assert run.data.tags["registered_alias"] == "champion"
    assert run.data.tags["data_source"].endswith("listens.parquet")
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.digest
    plots = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"quality_vs_k.png", "item_popularity_long_tail.png", "convergence.png",
                     "confidence_refinement.png"}
    history = client.get_metric_history(run.info.run_id, "reconstruction_error")
    assert len(history) >= 2
    # the default refinement: one loss per sweep, never rising, and the penalty "auto" resolved to
    refinement = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "confidence_loss"))
    sweeps = int(params["nmf_confidence_sweeps"])
    assert sweeps == NMFParams().confidence_sweeps and params["nmf_confidence_shift"] == str(NMFParams().confidence_shift)
    assert [step for step, _ in refinement] == list(range(1, sweeps + 1))
    assert all(b <= a * (1 + 1e-6) for (_, a), (_, b) in zip(refinement, refinement[1:], strict=False))
    assert params["nmf_confidence"] == "idf" and params["nmf_confidence_reg"] == "auto"
    assert float(params["confidence_reg_resolved"]) == pytest.approx(0.7 * float(params["n_users"]) ** 0.5, rel=1e-6)


def test_model_files_are_in_the_s3_bucket(trained, local_stack):
    s3 = boto3.client("s3", endpoint_url=local_stack.s3_endpoint, aws_access_key_id="x", aws_secret_access_key="x",
                      region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=local_stack.bucket)["Contents"]]
    for name in ("MLmodel", "artifacts/timbral/arrays.npz", "artifacts/timbral/checksums.json", "pyfunc_model.py"):
        assert any(k.endswith(name) for k in keys), f"{name} not in bucket"
    assert not any(k.endswith(".pkl") for k in keys), "a pickled python model was logged"


def test_gate_promote_and_rollback(trained, client, local_stack):
    good, poor = trained
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    assert client.get_model_version_by_alias(MODEL, "challenger").version == "2"
    assert "challenger" in poor.stdout
    env = local_stack.client_env()
    out = timbral("promote", "--model-name", MODEL, "--version", "2", env=env)
    assert "v1 -> v2" in out.stdout
    assert client.get_model_version_by_alias(MODEL, "champion").version == "2"
    assert json.loads(client.get_registered_model(MODEL).tags["champion_history"]) == ["1", "2"]
    out = timbral("rollback", "--model-name", MODEL, env=env)
    assert "v2 -> v1" in out.stdout
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    failed = timbral("rollback", "--model-name", MODEL, env=env, check=False)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1].startswith("error: ") and "no previous champion" in failed.stderr
    missing = timbral("promote", "--model-name", MODEL, "--version", "99", env=env, check=False)
    assert missing.returncode == 1 and "no version 99" in missing.stderr


def test_pyfunc_contract_matches_the_core(trained, mlflow_env, tmp_path):
    uri = f"models:/{MODEL}@champion"
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path))
    core = NMFRecommender.load(Path(local) / "artifacts" / "timbral")
    pyfunc = mlflow.pyfunc.load_model(uri)
    users = core.users.externals(np.arange(5)) + ["no-such-user" if core.users.kind == "str" else 10**9]
    out = pyfunc.predict(pd.DataFrame({"user_id": users}), params={"k": 7})
    assert list(out.columns) == ["user_id", "item_ids", "scores", "strategy"]
    assert out["user_id"].tolist() == users
    expected = core.recommend_ids(users, 7)
    for row, want in zip(out.itertuples(), expected, strict=True):
        assert list(row.item_ids) == want["item_ids"]
        assert np.allclose(list(row.scores), want["scores"])
        assert row.strategy == want["strategy"]
    assert out["strategy"].tolist()[-1] == "popular"


def test_bad_data_fails_with_one_line_and_registers_nothing(trained, client, local_stack, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,value\nu1,i1,3\nu2,i2,-4\n")
    before = len(client.search_model_versions(f"name='{MODEL}'"))
    proc = timbral("train", "--data", str(bad), "--model-name", MODEL, env=local_stack.client_env(), check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "row 3" in last and "value" in last
    assert len(client.search_model_versions(f"name='{MODEL}'")) == before
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"


@pytest.mark.postgres
def test_postgresql_backend_store(postgres_db, listens, tmp_path):
    with LocalStack(tmp_path / "pg-stack", backend_store_uri=postgres_db.url) as stack:
        proc = timbral("train", "--data", str(listens), "--model-name", "pg-model", "--components", "8",
                       "--max-iter", "20", env=stack.client_env())
        assert "champion" in proc.stdout
        client = MlflowClient(stack.tracking_uri)
        assert client.get_model_version_by_alias("pg-model", "champion").version == "1"
    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_db.url)
    with engine.connect() as conn:
        names = [r[0] for r in conn.execute(sqlalchemy.text("select name from registered_models"))]
    engine.dispose()
    assert names == ["pg-model"]
