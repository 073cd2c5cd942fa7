"""service.settings and service.schemas: parsing, defaults, limits, redaction, import hygiene."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.schemas import (
    BatchRecommendRequest,
    HistoryRequest,
    RecommendRequest,
    ScoreRequest,
    SimilarItemsRequest,
)
from service.settings import Settings, get_settings, redact_url

ENV_KEYS = ("MODEL_TAG", "REDIS_URL", "ENABLE_CACHING", "CACHE_TTL", "REDIS_TIMEOUT_MS", "MAX_BATCH_SIZE",
            "MAX_LATENCY_MS", "MAX_K", "MAX_BATCH_USERS", "LOG_LEVEL", "BLAS_THREADS", "API_WORKERS",
            "MODEL_CALLS_IN_FLIGHT", "MODEL_CALL_HOLD", "TRACING_ENABLED")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_defaults(clean_env):
    s = Settings()
    assert (s.model_tag, s.redis_url, s.enable_caching, s.cache_ttl, s.redis_timeout_ms) == (
        "timbral-nmf:latest", "redis://127.0.0.1:6379/0", True, 300, 250)
    assert (s.max_batch_size, s.max_latency_ms, s.max_k, s.max_batch_users, s.log_level, s.blas_threads) == (
        64, 1000, 500, 100, "INFO", 1)
    assert (s.api_workers, s.model_calls_in_flight, s.model_call_hold) == (2, 1, 0.6)
    assert (s.direct_answers, s.tracing_enabled, s.direct_lane) == (True, False, True)


@pytest.mark.parametrize(("direct", "tracing", "lane"), [("false", "false", False), ("true", "true", False),
                                                         ("false", "true", False), ("true", "false", True)])
def test_the_direct_lane_is_off_when_switched_off_or_while_tracing(clean_env, direct, tracing, lane):
    clean_env.setenv("DIRECT_ANSWERS", direct)
    clean_env.setenv("TRACING_ENABLED", tracing)
    assert Settings().direct_lane is lane


def test_environment_and_dotenv(clean_env, tmp_path):
    clean_env.setenv("ENABLE_CACHING", "false")
    clean_env.setenv("MAX_K", "50")
    clean_env.setenv("model_tag", "timbral-nmf:abc")
    (tmp_path / ".env").write_text("CACHE_TTL=7\nMAX_K=999\n")
    s = Settings()
    assert s.enable_caching is False and s.max_k == 50 and s.cache_ttl == 7 and s.model_tag == "timbral-nmf:abc"


@pytest.mark.parametrize(("key", "value"), [("MAX_K", "0"), ("CACHE_TTL", "-1"), ("ENABLE_CACHING", "maybe"),
                                            ("LOG_LEVEL", "LOUD"), ("MAX_BATCH_SIZE", "0"), ("BLAS_THREADS", "x"),
                                            ("API_WORKERS", "0"), ("MODEL_CALLS_IN_FLIGHT", "0"),
                                            ("MODEL_CALL_HOLD", "1.5"), ("MODEL_CALL_HOLD", "-0.1"),
                                            ("DIRECT_ANSWERS", "sometimes")])
def test_invalid_values_are_rejected(clean_env, key, value):
    clean_env.setenv(key, value)
    with pytest.raises(ValidationError) as err:
        Settings()
    assert key.lower() in str(err.value)


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:hunter2@cache:6380/1", "redis://:***@cache:6380/1"),
    ("rediss://app:hunter2@cache.example:6380/0?ssl_cert_reqs=none", "rediss://app:***@cache.example:6380/0?ssl_cert_reqs=none"),
    ("redis://app:hunter2@[::1]:6380", "redis://app:***@[::1]:6380"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert "hunter2" not in redact_url(url)


def test_limits_come_from_settings_at_validation_time(clean_env):
    clean_env.setenv("MAX_K", "20")
    clean_env.setenv("MAX_BATCH_USERS", "3")
    get_settings.cache_clear()
    RecommendRequest(user_id="u", k=20)
    with pytest.raises(ValidationError, match="MAX_K = 20"):
        RecommendRequest(user_id="u", k=21)
    with pytest.raises(ValidationError, match="MAX_BATCH_USERS = 3"):
        BatchRecommendRequest(user_ids=[1, 2, 3, 4])


@pytest.mark.parametrize(("model", "body", "field"), [
    (RecommendRequest, {"user_id": ""}, "user_id"),
    (RecommendRequest, {"user_id": False}, "user_id"),
    (RecommendRequest, {"user_id": 2.5}, "user_id"),
    (RecommendRequest, {"user_id": "x" * 300}, "user_id"),
    (RecommendRequest, {"user_id": "u", "k": 0}, "k"),
    (RecommendRequest, {"user_id": "u", "k": 2.0}, "k"),
    (RecommendRequest, {"user_id": "u", "exclude_seen": 1}, "exclude_seen"),
    (RecommendRequest, {"user_id": "u", "extra": 1}, "extra"),
    (HistoryRequest, {"items": [{"item_id": "a", "value": float("nan")}]}, "items"),
    (SimilarItemsRequest, {"item_id": None}, "item_id"),
    (ScoreRequest, {"user_id": "u", "item_ids": []}, "item_ids"),
])
def test_schema_errors_name_the_field(clean_env, model, body, field):
    with pytest.raises(ValidationError) as err:
        model.model_validate(body)
    assert err.value.errors()[0]["loc"][0] == field


def test_ids_keep_their_type_and_are_stripped(clean_env):
    assert RecommendRequest(user_id=" u1 ").user_id == "u1"
    assert RecommendRequest(user_id=42).user_id == 42
    assert RecommendRequest.model_validate_json(b'{"user_id": "42"}').user_id == "42"


def test_importing_settings_or_importer_pulls_in_neither_bentoml_nor_mlflow():
    code = ("import sys, service, service.settings, service.schemas, service.cache, service.importer;"
            "bad = [m for m in ('bentoml', 'mlflow', 'redis', 'training') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_package_resolves_the_services_lazily(tmp_path):
    code = ("import sys, service; assert 'bentoml' not in sys.modules;"
            "import _bentoml_sdk; svc = service.Timbral; assert isinstance(svc, _bentoml_sdk.Service);"
            "assert svc.name == 'Timbral' and 'model' in svc.dependencies;"
            "assert service.TimbralModel.name == 'TimbralModel'")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)
