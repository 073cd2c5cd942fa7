"""Fixtures for served tests: a BentoML home outside the repo, small fitted models in its store, a served bento.

One ``bentoml serve`` per test module (module-scoped ``served``), with its own password-protected
redis-server, so the whole served tier stays within a few minutes on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.helpers import REPO, BentoServer, fit_small_model, store_model
from tests.servers import RedisServer

REDIS_PASSWORD = "s3cret-Pa55word"


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("bentoml-home")
    assert REPO not in home.resolve().parents, "BENTOML_HOME must lie outside the repo (bentoml build copies it)"
    return home


@pytest.fixture(scope="session")
def small_model():
    """String ids (``u0``…, ``i0``…), registry version "1"."""
    return fit_small_model(seed=0)


@pytest.fixture(scope="session")
def int_model():
    """Integer ids, a different fit: registry version "2"."""
    return fit_small_model(seed=1, int_ids=True)


@pytest.fixture(scope="session")
def model_tag(bentoml_home, small_model) -> str:
    return store_model(small_model, bentoml_home, version="1")


@pytest.fixture(scope="session")
def int_model_tag(bentoml_home, int_model) -> str:
    return store_model(int_model, bentoml_home, version="2")


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"), password=REDIS_PASSWORD).start()
    yield server
    server.stop()


def serve_env(tag: str, redis_url: str, **extra: str) -> dict[str, str]:
    env = {"MODEL_TAG": tag, "REDIS_URL": redis_url, "ENABLE_CACHING": "true", "CACHE_TTL": "300",
           "REDIS_TIMEOUT_MS": "50", "MAX_K": "500", "MAX_BATCH_USERS": "100", "MAX_BATCH_SIZE": "64",
           "MAX_LATENCY_MS": "1000", "LOG_LEVEL": "INFO", "BLAS_THREADS": "1",
           # the limiter is on (every request goes through it and Redis) but never trips in these tests
           "RATE_LIMIT_ENABLED": "true", "RATE_LIMIT": "1000000/minute", "MAX_REQUEST_SIZE": "1048576"}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def served(bentoml_home, model_tag, module_redis, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    server = BentoServer("service:Timbral", bentoml_home, env=serve_env(model_tag, module_redis.url), log_path=log)
    with server:
        yield server
