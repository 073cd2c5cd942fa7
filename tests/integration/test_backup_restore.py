"""`timbral backup|restore` on real parts: local PostgreSQL, a moto S3 server, mlflow servers, `timbral train`.

The PostgreSQL tests share one trained site (two registered versions, champion + challenger) and one backup;
the last of them wipes the site (database dropped, S3 server restarted empty), restores it and checks that a new
MLflow server answers exactly as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import boto3
import pandas as pd
import pytest
from click.testing import CliRunner

from tests.servers import PostgresDatabase, postgres_available
from training.backup import backup_command, restore_command
from training.backup_store import BackendStore, redact
from training.generate import write_listens
from training.local_stack import LOCAL_AWS, LocalStack, free_port, start_mlflow, start_moto, stop_process

TIMBRAL = str(Path(sys.executable).parent / "timbral")
MODEL = "timbral-nmf-backup"
ARTIFACTS = "s3://timbral-artifacts/mlflow"
NAME = re.compile(r"^timbral-backup-\d{8}T\d{6}Z(-\d+)?$")
SMALL = ("--components", "8", "--max-iter", "20", "--experiment", "backup-it", "--model-name", MODEL)


def timbral(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([TIMBRAL, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"timbral {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


def cli(command, *args: str, env: dict[str, str], code: int = 0):
    result = CliRunner().invoke(command, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == code, f"exit {result.exit_code}:\n{result.output[-3000:]}"
    return result


def s3_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x",
                        region_name="us-east-1")


def s3_checksums(endpoint: str, bucket: str = "timbral-artifacts", prefix: str = "mlflow/") -> dict[str, str]:
    s3, out = s3_client(endpoint), {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"][len(prefix):]] = hashlib.sha256(body).hexdigest()
    return out


def folder_checksums(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def snapshot(tracking_uri: str, env: dict[str, str], users: list) -> dict:
    """What a user of the registry sees: counts, aliases, champion history and the champion's answers."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    with mock.patch.dict(os.environ, {**env, "MLFLOW_TRACKING_URI": tracking_uri}):
        mlflow.set_tracking_uri(tracking_uri)
        client = MlflowClient(tracking_uri)
        experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        model = client.get_registered_model(MODEL)
        champion = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
        out = champion.predict(pd.DataFrame({"user_id": users}), params={"k": 10})
    return {
        "runs": len(client.search_runs(experiments, run_view_type=ViewType.ALL)),
        "versions": sorted(v.version for v in client.search_model_versions(f"name='{MODEL}'")),
        "aliases": dict(model.aliases),
        "history": model.tags.get("champion_history"),
        "answers": [(r.user_id, [int(i) for i in r.item_ids], [float(s) for s in r.scores], r.strategy)
                    for r in out.itertuples()],
    }


@pytest.fixture(scope="module")
def listens(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "listens.parquet"
    write_listens(path, n_users=600, n_items=1200, n_interactions=20_000, seed=5)
    return path


@pytest.fixture(scope="module")
def users(listens) -> list:
    return [int(u) for u in pd.read_parquet(listens, columns=["user_id"])["user_id"].unique()[:4]] + [10**12]


@dataclass
class Site:
    db: PostgresDatabase
    stack: LocalStack
    store_uri: str  # with a password (trust auth ignores it): it must never show up in a backup
    before: dict
    objects: dict[str, str]
    backups: Path
    backup: Path
    seconds: float


@pytest.fixture(scope="module")
def site(tmp_path_factory, listens, users):
    if not postgres_available():
        pytest.skip("no PostgreSQL reachable on 127.0.0.1:5432")
    work = tmp_path_factory.mktemp("pg-backup")
    db = PostgresDatabase().create()
    stack = LocalStack(work / "stack", backend_store_uri=db.url)
    try:
        stack.start()
        env = stack.client_env()
        timbral("train", "--data", str(listens), *SMALL, env=env)  # gate: no champion yet -> champion
        timbral("train", "--data", str(listens), *SMALL, "--seed", "1", "--promote", "never", env=env)  # challenger
        before = snapshot(stack.tracking_uri, env, users)
        assert before["aliases"] == {"champion": "1", "challenger": "2"}
        store_uri = db.url.replace("postgres@", "postgres:s3cret-pw@")
        started = time.perf_counter()
        out = cli(backup_command, "--backend-store-uri", store_uri, "--artifacts", ARTIFACTS,
                  "--dest", str(work / "backups"), env=env)
        seconds = time.perf_counter() - started
        assert "s3cret-pw" not in out.output
        (backup,) = (work / "backups").iterdir()
        yield Site(db, stack, store_uri, before, s3_checksums(stack.s3_endpoint), work / "backups", backup,
                   seconds)
    finally:
        stack.stop()
        db.drop()


@pytest.mark.postgres
def test_backup_holds_the_store_every_object_and_a_manifest(site):
    assert NAME.match(site.backup.name)
    manifest = json.loads((site.backup / "manifest.json").read_text())
    assert manifest["counts"]["runs"] == site.before["runs"] == 2
    assert manifest["counts"]["model_versions"] == 2 and manifest["counts"]["registered_models"] == 1
    assert manifest["counts"]["aliases"] == 2
    assert {o["key"]: o["sha256"] for o in manifest["objects"]} == site.objects
    assert any(k.endswith("artifacts/timbral/arrays.npz") for k in site.objects)
    assert folder_checksums(site.backup / "artifacts") == site.objects
    store = site.backup / manifest["store"]["file"]
    assert manifest["store"]["file"] == "store.pgdump" and store.read_bytes()[:5] == b"PGDMP"
    assert manifest["store"]["sha256"] == hashlib.sha256(store.read_bytes()).hexdigest()
    assert manifest["source"]["backend_store_uri"] == redact(site.store_uri)
    text = (site.backup / "manifest.json").read_text()
    assert "s3cret-pw" not in text and "***" in text and LOCAL_AWS["AWS_SECRET_ACCESS_KEY"] not in text
    assert redact("postgresql+psycopg2://u:p%40ss@h:5432/db") == "postgresql+psycopg2://u:***@h:5432/db"
    print(f"\nPostgreSQL backup: {site.seconds:.1f}s, store {store.stat().st_size / 1e3:.0f} kB, "
          f"{len(site.objects)} objects {manifest['artifacts']['bytes'] / 1e6:.2f} MB")


@pytest.mark.postgres
def test_dry_runs_change_nothing(site, tmp_path):
    env = site.stack.client_env()
    out = cli(backup_command, "--backend-store-uri", site.db.url, "--dest", str(site.backups), "--keep", "1",
              "--dry-run", env=env)
    assert "would back up postgresql store" in out.output
    assert f"would delete old backup {site.backup}" in out.output
    assert [p.name for p in site.backups.iterdir()] == [site.backup.name]
    target = PostgresDatabase()  # never created
    try:
        out = cli(restore_command, str(site.backup), "--backend-store-uri", target.url,
                  "--artifacts", "s3://timbral-dry-run/mlflow", "--dry-run", env=env)
        assert "would restore" in out.output and "would refuse" not in out.output
        assert not BackendStore(target.url).exists()
        names = {b["Name"] for b in s3_client(site.stack.s3_endpoint).list_buckets()["Buckets"]}
        assert "timbral-dry-run" not in names
        out = cli(restore_command, str(site.backup), "--backend-store-uri", site.db.url, "--dry-run", env=env)
        assert "would refuse" in out.output and "already holds objects" in out.output
    finally:
        target.drop()


@pytest.mark.postgres
def test_missing_or_older_pg_dump_is_a_clear_error(site, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    out = cli(backup_command, "--backend-store-uri", site.db.url, "--dest", str(tmp_path / "b"), "--pg-bin", str(fake),
              env=site.stack.client_env(), code=1)
    assert "pg_dump not found in" in out.output and "postgresql-client" in out.output
    (fake / "pg_dump").write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 11.22'\n")
    (fake / "pg_dump").chmod(0o755)
    out = cli(backup_command, "--backend-store-uri", site.db.url, "--dest", str(tmp_path / "b"), "--pg-bin", str(fake),
              env=site.stack.client_env(), code=1)
    assert "pg_dump 11 is older than the PostgreSQL server (15)" in out.output
    assert not (tmp_path / "b").exists()


@pytest.mark.postgres
def test_restore_refuses_a_non_empty_target_without_force(site):
    out = cli(restore_command, str(site.backup), "--backend-store-uri", site.db.url, env=site.stack.client_env(),
              code=1)
    assert "refusing to restore over a non-empty target" in out.output and "--force" in out.output


@pytest.mark.postgres
def test_tampered_backup_is_refused_before_anything_is_touched(site, tmp_path):
    env = site.stack.client_env()
    counts = BackendStore(site.db.url).counts()
    for damage in ("flip", "remove", "store"):
        copy = tmp_path / damage / site.backup.name
        shutil.copytree(site.backup, copy)
        victim = next(p for p in sorted((copy / "artifacts").rglob("*")) if p.is_file() and p.stat().st_size > 10)
        if damage == "store":
            victim = copy / "store.pgdump"
        if damage == "remove":
            victim.unlink()
        else:
            data = bytearray(victim.read_bytes())
            data[len(data) // 2] ^= 0xFF
            victim.write_bytes(bytes(data))
        out = cli(restore_command, str(copy), "--backend-store-uri", site.db.url, "--force", env=env, code=1)
        assert "failed verification, nothing was restored" in out.output
        assert ("missing" if damage == "remove" else "checksum mismatch") in out.output
        assert victim.relative_to(copy).as_posix() in out.output
    assert BackendStore(site.db.url).counts() == counts
    assert s3_checksums(site.stack.s3_endpoint) == site.objects


@pytest.mark.postgres
def test_keep_removes_older_backups_only(site, tmp_path):
    env = site.stack.client_env()
    dest = tmp_path / "nightly"
    shutil.copytree(site.backup, dest / "timbral-backup-20200101T000000Z")  # complete, old
    (dest / "timbral-backup-20200102T000000Z").mkdir()  # incomplete, old
    (dest / "not-a-backup").mkdir()
    (dest / "notes.txt").write_text("keep me")
    cli(backup_command, "--backend-store-uri", site.db.url, "--dest", str(dest), "--keep", "1", env=env)
    names = sorted(p.name for p in dest.iterdir())
    assert len(names) == 3 and names[:2] == ["not-a-backup", "notes.txt"] and NAME.match(names[2])
    assert names[2] != "timbral-backup-20200101T000000Z"
    # the same on S3, then a dry-run restore straight from there (downloaded and verified, nothing written)
    s3 = s3_client(site.stack.s3_endpoint)
    s3.create_bucket(Bucket="timbral-backups")
    s3.put_object(Bucket="timbral-backups", Key="nightly/timbral-backup-20200101T000000Z/manifest.json", Body=b"{}")
    s3.put_object(Bucket="timbral-backups", Key="nightly/other/file", Body=b"x")
    for _ in range(2):
        cli(backup_command, "--backend-store-uri", site.db.url, "--dest", "s3://timbral-backups/nightly",
            "--keep", "1", env=env)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="timbral-backups")["Contents"]]
    folders = sorted({k.split("/")[1] for k in keys})
    assert len(folders) == 2 and folders[0] == "other" and NAME.match(folders[1])
    assert folders[1] != "timbral-backup-20200101T000000Z" and f"nightly/{folders[1]}/manifest.json" in keys
    out = cli(restore_command, "s3://timbral-backups/nightly", "--latest", "--backend-store-uri", site.db.url,
              "--dry-run", env=env)
    assert f"verified s3://timbral-backups/nightly/{folders[1]}" in out.output


@pytest.mark.postgres
def test_round_trip_after_losing_everything(site, users, tmp_path):
    site.stack.stop()  # the MLflow server and the S3 server (moto keeps objects in memory: all gone)
    site.db.drop()
    moto_port = free_port()
    procs = [start_moto(moto_port, tmp_path / "moto.log")]
    endpoint = f"http://127.0.0.1:{moto_port}"
    env = {**LOCAL_AWS, "MLFLOW_S3_ENDPOINT_URL": endpoint}
    try:
        started = time.perf_counter()
        out = cli(restore_command, str(site.backups), "--latest", "--backend-store-uri", site.store_uri,
                  "--artifacts", ARTIFACTS, env=env)
        seconds = time.perf_counter() - started
        assert "restored" in out.output and "2 runs" in out.output and "s3cret-pw" not in out.output
        assert s3_checksums(endpoint) == site.objects
        port = free_port()
        procs.append(start_mlflow(port, site.db.url, ARTIFACTS, endpoint, tmp_path / "mlflow.log"))
        after = snapshot(f"http://127.0.0.1:{port}", env, users)
        assert after == site.before
        print(f"\nPostgreSQL restore: {seconds:.1f}s")
    finally:
        for proc in reversed(procs):
            stop_process(proc)


def test_sqlite_round_trip_with_local_artifacts(tmp_path):
    """Smaller, without servers: an sqlite store and artifacts in a folder, written by the MLflow client itself."""
    from mlflow import MlflowClient

    source, artifacts = f"sqlite:///{tmp_path / 'src' / 'mlflow.db'}", tmp_path / "artifacts"
    (tmp_path / "src").mkdir()
    client = MlflowClient(source, source)
    run = client.create_run(client.create_experiment("sq", artifact_location=artifacts.as_uri()))
    client.log_param(run.info.run_id, "n_components", "8")
    client.log_metric(run.info.run_id, "ndcg_at_10", 0.25)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(os.urandom(50_000))
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    client.log_artifacts(run.info.run_id, str(tmp_path / "model"), "model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("sq-model")
    version = client.create_model_version("sq-model", f"{run.info.artifact_uri}/model", run.info.run_id)
    client.set_registered_model_alias("sq-model", "champion", version.version)
    objects = folder_checksums(artifacts)

    cli(backup_command, "--backend-store-uri", source, "--artifacts", str(artifacts), "--dest",
        str(tmp_path / "backups"), env={})
    (backup,) = (tmp_path / "backups").iterdir()
    assert (backup / "store.sqlite").read_bytes()[:15] == b"SQLite format 3"
    shutil.rmtree(artifacts)  # lose everything
    (tmp_path / "src" / "mlflow.db").unlink()

    target = f"sqlite:///{tmp_path / 'restored' / 'mlflow.db'}"  # the artifacts go back where the store expects
    args = [str(backup), "--backend-store-uri", target, "--artifacts", artifacts.as_uri()]
    out = cli(restore_command, *args, env={})
    assert "1 runs, 1 registered models, 1 versions, 1 aliases, 2 objects" in out.output
    assert folder_checksums(artifacts) == objects
    restored = MlflowClient(target, target)
    champion = restored.get_model_version_by_alias("sq-model", "champion")
    assert champion.version == version.version and champion.source == version.source
    again = restored.get_run(champion.run_id)
    assert again.data.params == {"n_components": "8"} and again.data.metrics == {"ndcg_at_10": 0.25}
    local = restored.download_artifacts(champion.run_id, "model", str(tmp_path / "download"))
    assert (Path(local) / "weights.bin").read_bytes() == (tmp_path / "model" / "weights.bin").read_bytes()

    out = cli(restore_command, *args, env={}, code=1)
    assert "store sqlite:///" in out.output and "holds data" in out.output and "already holds objects" in out.output
    assert "restored" in cli(restore_command, *args, "--force", env={}).output
