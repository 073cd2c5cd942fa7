"""The served bento's limits and secrets: 429/413 for real, fail-open without Redis, no password anywhere.

A bento of its own: RATE_LIMIT=5/minute, MAX_REQUEST_SIZE=64 KiB, TRUST_FORWARDED_FOR=true, on a
password-protected Redis of its own. Every response body of the module and the served process's whole log are
searched for the password at the end.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.e2e.conftest import serve_env
from tests.e2e.helpers import BentoServer
from tests.servers import RedisServer

PASSWORD = "hardening-Pw-7c1d9e"
OTHER_PASSWORD = "rotated-Pw-55aa01"
BODIES: list[str] = []  # every response body of this module, searched for the password at the end


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-hardening"), password=PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def limited(bentoml_home, model_tag, redis, tmp_path_factory):
    # the product's Redis timeout (250 ms), not the 50 ms the other served tests use: these tests count on every
    # limiter call reaching Redis, and a loaded 2-core CI machine has taken longer than 50 ms, letting a 6th hit by
    env = serve_env(model_tag, redis.url, RATE_LIMIT="5/minute", MAX_REQUEST_SIZE="65536", TRUST_FORWARDED_FOR="true",
                    REDIS_TIMEOUT_MS="250")
    log = tmp_path_factory.mktemp("serve-hardening") / "serve.log"
    with BentoServer("service:Timbral", bentoml_home, env=env, log_path=log) as server:
        yield server


def req(server, method: str, path: str, **kw) -> httpx.Response:
    resp = httpx.request(method, f"{server.url}{path}", timeout=30, **kw)
    BODIES.append(f"{method} {path} {resp.status_code} {dict(resp.headers)} {resp.text}")
    return resp


def rec(server, headers: dict | None = None, body: dict | None = None) -> httpx.Response:
    return req(server, "POST", "/recommend", json=body or {"user_id": "u1", "k": 2}, headers=headers or {})


def test_over_the_limit_is_429_with_retry_after(limited):
    key = {"x-api-key": "client-a"}
    assert [rec(limited, key).status_code for _ in range(5)] == [200] * 5
    denied = rec(limited, key)
    assert denied.status_code == 429 and denied.headers["content-type"] == "application/json"
    assert 1 <= int(denied.headers["retry-after"]) <= 60
    assert denied.json()["detail"][0]["type"] == "rate_limited" and "5 per 1 minute" in denied.json()["error"]
    assert "x-request-id" in denied.headers
    assert rec(limited, {"x-api-key": "client-b"}).status_code == 200  # per client
    for path in ("/livez", "/readyz", "/healthz", "/metrics", "/health", "/ping", "/", "/docs.json"):
        assert req(limited, "GET", path, headers=key).status_code == 200, path
    metrics = req(limited, "GET", "/metrics").text
    assert 'timbral_rate_limit_total{result="limited"}' in metrics
    assert 'timbral_responses_total{endpoint="/recommend",status="429"}' in metrics


def test_forwarded_for_keys_by_the_proxy_hop(limited):
    # TRUST_FORWARDED_FOR=true: the last hop (the one nginx adds) is the client; what the client wrote before it
    # cannot buy it a fresh window
    for n in range(5):
        assert rec(limited, {"x-forwarded-for": f"6.6.6.{n}, 203.0.113.7"}).status_code == 200
    assert rec(limited, {"x-forwarded-for": "9.9.9.9, 203.0.113.7"}).status_code == 429
    assert rec(limited, {"x-forwarded-for": "203.0.113.8"}).status_code == 200


def test_body_limit_setting_is_honoured(limited):
    body = {"user_id": "u1", "exclude_items": ["x" * 200] * 400}  # ~80 KiB > 64 KiB
    resp = req(limited, "POST", "/recommend", json=body, headers={"x-api-key": "big"})
    assert resp.status_code == 413 and "65536" in resp.json()["error"]


def test_fails_open_without_redis_and_resumes(limited, redis):
    key = {"x-api-key": "client-c"}
    assert [rec(limited, key).status_code for _ in range(6)] == [200] * 5 + [429]
    redis.stop()
    try:
        assert [rec(limited, key).status_code for _ in range(10)] == [200] * 10  # fails open
        health = req(limited, "GET", "/health").json()
        assert health["status"] == "degraded" and health["rate_limit"] == "failing-open" and health["detail"]
    finally:
        redis.start()  # same port, empty (no persistence): every window starts again
    deadline = time.monotonic() + 30
    while req(limited, "GET", "/health").json()["rate_limit"] != "ok":
        assert time.monotonic() < deadline, "the limiter did not resume"
        time.sleep(0.5)
    assert [rec(limited, key).status_code for _ in range(6)] == [200] * 5 + [429]


def test_no_secret_in_bodies_or_logs(limited, redis):
    # errors of every kind, the info routes, and Redis refusing our (now wrong) password
    hdr = {"x-api-key": "secrets"}
    req(limited, "POST", "/recommend", content=b"{", headers={"content-type": "application/json", **hdr})
    req(limited, "POST", "/recommend", content=b"x", headers={"content-type": "text/plain", **hdr})
    req(limited, "POST", "/similar-items", json={"item_id": "nope"}, headers=hdr)
    req(limited, "GET", "/recommend")
    req(limited, "GET", "/nowhere")
    for path in ("/model", "/health", "/metrics", "/docs.json", "/readyz"):
        req(limited, "GET", path)
    redis.stop()
    rotated = RedisServer(redis.workdir, port=redis.port, password=OTHER_PASSWORD).start()
    try:
        for n in range(3):
            assert rec(limited, {"x-api-key": f"rotated-{n}"}).status_code == 200
        time.sleep(1.2)  # past the back-off: /health tries Redis again and reports why it failed
        health = req(limited, "GET", "/health").json()
        assert health["status"] == "degraded" and health["redis"] == "down" and health["detail"]
        assert "***" in health["redis_url"]
    finally:
        rotated.stop()
        redis.start()
    time.sleep(0.5)
    log = limited.log_path.read_text(errors="replace")
    assert "redis at redis://:***@" in log  # the outage was logged, redacted
    for secret in (PASSWORD, OTHER_PASSWORD):
        assert secret not in log, "password in the served process's log"
        leaked = [b[:200] for b in BODIES if secret in b]
        assert not leaked, leaked
    assert len(BODIES) > 40
