"""Shared fixtures: throwaway Redis, a local moto S3 + MLflow stack, a PostgreSQL database of our own."""

from __future__ import annotations

import os

import pytest

from tests.servers import PostgresDatabase, RedisServer, postgres_available
from training.local_stack import LocalStack

# BLAS threads: deterministic and polite on 2 cores
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory):
    """moto S3 server + mlflow server (sqlite backend) for the whole session."""
    with LocalStack(tmp_path_factory.mktemp("stack")) as stack:
        yield stack


@pytest.fixture
def mlflow_env(local_stack, monkeypatch):
    """Point this test's MLflow client at the local stack."""
    for key, value in local_stack.client_env().items():
        monkeypatch.setenv(key, value)
    import mlflow

    mlflow.set_tracking_uri(local_stack.tracking_uri)
    yield local_stack


@pytest.fixture
def postgres_db():
    if not postgres_available():
        pytest.skip("no PostgreSQL reachable on 127.0.0.1:5432")
    db = PostgresDatabase().create()
    yield db
    db.drop()
