"""`timbral import-model`: MLflow registry (moto S3 + mlflow server) → a throwaway BentoML model store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.importer import ImportModelError, label_value, parse_model_uri
from timbral.artifact import ARRAYS_FILE, CHECKSUMS_FILE, METADATA_FILE

TIMBRAL = str(Path(sys.executable).parent / "timbral")
MODEL = "timbral-nmf-importer"


def import_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", **env}
    return subprocess.run([TIMBRAL, "import-model", *args], env=full, capture_output=True, text=True, timeout=300)


def store_models(home: Path) -> list[dict]:
    """The store's models as (tag, labels), read from the store's files (no BentoML state in this process)."""
    import yaml

    out = []
    for info in sorted((home / "models").glob("*/*/model.yaml")):
        data = yaml.safe_load(info.read_text())
        out.append({"tag": f"{data['name']}:{data['version']}", "labels": data.get("labels") or {},
                    "path": info.parent})
    return out


@pytest.fixture(scope="module")
def registered(local_stack, tmp_path_factory):
    """A small model trained and registered by the training pipeline (version 1 → @champion)."""
    import mlflow

    from timbral.params import NMFParams
    from training.generate import write_listens
    from training.local_stack import environ
    from training.pipeline import TrainConfig, run_training

    mlflow.set_tracking_uri(local_stack.tracking_uri)
    with environ(local_stack.client_env()):
        data = tmp_path_factory.mktemp("listens") / "listens.parquet"
        write_listens(data, n_users=300, n_items=400, n_interactions=8_000, seed=5)
        return run_training(TrainConfig(data=str(data), model_name=MODEL, experiment="importer",
                                        params=NMFParams(n_components=8, max_iter=40), promote="always"))


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "bentoml"


def test_parse_model_uri_and_labels():
    assert parse_model_uri("models:/timbral-nmf@champion") == ("timbral-nmf", None, "champion")
    assert parse_model_uri("models:/timbral-nmf/3") == ("timbral-nmf", "3", None)
    for bad in ("runs:/abc/model", "models:/x", "models:/x/latest/1", "timbral-nmf@champion"):
        with pytest.raises(ImportModelError):
            parse_model_uri(bad)
    assert label_value("a b/c") == "a-b-c" and len(label_value("x" * 100)) == 63 and label_value("") == "none"


def test_import_then_reimport_is_a_no_op(registered, local_stack, home):
    env = {**local_stack.client_env(), "BENTOML_HOME": str(home)}
    first = import_cli("--model-uri", f"models:/{MODEL}@champion", "--name", "timbral-nmf", env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    line = first.stdout.strip()
    assert line.startswith("imported ") and len(line.splitlines()) == 1 and f"version {registered.version}" in line
    models = store_models(home)
    assert len(models) == 1 and models[0]["tag"] in line
    labels = models[0]["labels"]
    assert labels["registry-name"] == MODEL and labels["registry-version"] == str(registered.version)
    assert labels["registry-alias"] == "champion" and labels["run-id"] == registered.run_id
    assert float(labels["ndcg-at-10"]) == pytest.approx(registered.metrics["ndcg_at_10"], abs=1e-6)
    assert all(isinstance(v, str) and len(v) <= 63 for v in labels.values())
    assert sorted(p.name for p in models[0]["path"].iterdir() if p.name in
                  (ARRAYS_FILE, METADATA_FILE, CHECKSUMS_FILE)) == sorted((ARRAYS_FILE, CHECKSUMS_FILE, METADATA_FILE))
    from timbral.nmf import NMFRecommender

    model = NMFRecommender.load(models[0]["path"])
    assert model.metadata["run_id"] == registered.run_id

    again = import_cli("--model-uri", f"models:/{MODEL}/{registered.version}", env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.startswith("already imported") and models[0]["tag"] in again.stdout
    assert len(store_models(home)) == 1


def test_unknown_alias_fails_in_one_line_and_leaves_the_store_unchanged(registered, local_stack, home):
    env = {**local_stack.client_env(), "BENTOML_HOME": str(home)}
    proc = import_cli("--model-uri", f"models:/{MODEL}@no-such-alias", env=env)
    assert proc.returncode != 0
    assert "no-such-alias" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert store_models(home) == []


def test_unreachable_registry_fails_cleanly(home):
    from training.local_stack import free_port

    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", "BENTOML_HOME": str(home)}
    proc = import_cli(env=env)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert "registry" in proc.stderr
    assert store_models(home) == []


def test_tampered_artifact_is_rejected_before_the_store_changes(mlflow_env, home, tmp_path):
    """A registered version whose arrays.npz was modified after its checksums were written."""
    import mlflow
    from mlflow import MlflowClient

    from tests.e2e.helpers import fit_small_model

    artifact = tmp_path / "model" / "artifacts" / "timbral"
    fit_small_model(seed=2).save(artifact)
    raw = bytearray((artifact / ARRAYS_FILE).read_bytes())
    raw[-10] ^= 0xFF
    (artifact / ARRAYS_FILE).write_bytes(bytes(raw))
    (tmp_path / "model" / "MLmodel").write_text("artifact_path: model\nflavors: {}\n")
    name = "timbral-nmf-tampered"
    mlflow.set_experiment("importer-tampered")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tmp_path / "model"), artifact_path="model")
    client = MlflowClient()
    client.create_registered_model(name)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    env = {**mlflow_env.client_env(), "BENTOML_HOME": str(home)}
    proc = import_cli("--model-uri", f"models:/{name}/{version.version}", env=env)
    assert proc.returncode != 0 and "sha256 mismatch" in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1
    assert store_models(home) == []
