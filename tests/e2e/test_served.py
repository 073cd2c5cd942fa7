"""The bento served for real (`bentoml serve service:Timbral`, production mode) with a throwaway Redis."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import REDIS_PASSWORD, serve_env
from tests.e2e.helpers import BentoServer


def post(server, path: str, body, **kw) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=30, **kw)


def core_answer(model, user_id, k: int, exclude_seen: bool = True) -> dict:
    return model.recommend_ids([user_id], k, exclude_seen=exclude_seen)[0]


def assert_items_match(answer: dict, expected: dict) -> None:
    assert [it["item_id"] for it in answer["items"]] == expected["item_ids"]
    np.testing.assert_allclose([it["score"] for it in answer["items"]], expected["scores"], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------- answers
def test_recommend_equals_in_process_core(served, small_model):
    for user in ("u0", "u7", "u33"):
        resp = post(served, "/recommend", {"user_id": user, "k": 5, "exclude_items": ["i-never"]})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["strategy"] == "personalized" and body["user_id"] == user and body["model_version"] == "1"
        assert_items_match(body, core_answer(small_model, user, 5))
    body = post(served, "/recommend", {"user_id": "u3", "k": 7, "exclude_seen": False}).json()
    assert_items_match(body, core_answer(small_model, "u3", 7, exclude_seen=False))
    assert "x-request-id" in post(served, "/recommend", {"user_id": "u3"}).headers


def test_second_identical_request_is_cached(served):
    body = {"user_id": "u11", "k": 4, "exclude_seen": True}
    first, second = post(served, "/recommend", body).json(), post(served, "/recommend", body).json()
    assert first["cached"] is False and second["cached"] is True
    assert first["items"] == second["items"]


def test_unknown_user_gets_popular_items(served, small_model):
    body = post(served, "/recommend", {"user_id": "someone-new", "k": 6}).json()
    assert body["strategy"] == "popular" and body["user_id"] == "someone-new"
    assert_items_match(body, core_answer(small_model, "someone-new", 6))


def test_exclude_and_include_items(served, small_model):
    top = core_answer(small_model, "u5", 5)["item_ids"]
    body = post(served, "/recommend", {"user_id": "u5", "k": 5, "exclude_items": top[:2]}).json()
    ids = [it["item_id"] for it in body["items"]]
    assert len(ids) == 5 and not set(top[:2]) & set(ids) and ids[:3] == top[2:5]
    include = ["i1", "i2", "i3", "i30", "unknown-item"]
    body = post(served, "/recommend", {"user_id": "u5", "k": 3, "include_items": include, "exclude_seen": False}).json()
    ids = [it["item_id"] for it in body["items"]]
    assert len(ids) == 3 and set(ids) <= set(include[:4])
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    body = post(served, "/recommend", {"user_id": "nobody", "k": 2, "include_items": ["i1", "i2", "i3"]}).json()
    assert body["strategy"] == "popular" and {it["item_id"] for it in body["items"]} <= {"i1", "i2", "i3"}


def test_batch_keeps_order_and_mixes_strategies(served, small_model):
    users = ["u1", "ghost", "u2", "u1"]
    body = post(served, "/recommend/batch", {"user_ids": users, "k": 4}).json()
    assert [r["user_id"] for r in body["results"]] == users
    assert [r["strategy"] for r in body["results"]] == ["personalized", "popular", "personalized", "personalized"]
    assert_items_match(body["results"][2], core_answer(small_model, "u2", 4))


def test_history_fold_in(served, small_model):
    history = [{"item_id": "i1", "value": 5}, {"item_id": "i2", "value": 2}, {"item_id": "no-such-item"}]
    body = post(served, "/recommend/history", {"items": history, "k": 5}).json()
    assert body["strategy"] == "personalized" and body["unknown_items"] == ["no-such-item"]
    ids = [it["item_id"] for it in body["items"]]
    assert len(ids) == 5 and not {"i1", "i2"} & set(ids)
    empty = post(served, "/recommend/history", {"items": [{"item_id": "nothing-known"}], "k": 3}).json()
    assert empty["strategy"] == "popular" and empty["unknown_items"] == ["nothing-known"] and len(empty["items"]) == 3


def test_similar_items(served, small_model):
    body = post(served, "/similar-items", {"item_id": "i4", "k": 5}).json()
    ids = [it["item_id"] for it in body["items"]]
    items, _ = small_model.similar_items([small_model.items.index("i4")], 5)
    assert ids == small_model.items.externals(items[0]) and "i4" not in ids
    missing = post(served, "/similar-items", {"item_id": "i-unknown", "k": 5})
    assert missing.status_code == 404 and missing.json()["detail"][0]["loc"] == ["item_id"]
    assert "i-unknown" in missing.json()["error"]


def test_score(served, small_model):
    body = post(served, "/score", {"user_id": "u3", "item_ids": ["i1", "zzz", "i9"]}).json()
    assert body["strategy"] == "personalized" and body["scores"][1] == {"item_id": "zzz", "score": None}
    u, i = small_model.users.index("u3"), small_model.items.indices(["i1", "i9"])
    expected = small_model.score([u], i[None, :])[0]
    np.testing.assert_allclose([body["scores"][0]["score"], body["scores"][2]["score"]], expected, rtol=1e-5)
    anon = post(served, "/score", {"user_id": "anon", "item_ids": ["i1"]}).json()
    assert anon["strategy"] == "popular"
    assert anon["scores"][0]["score"] == float(small_model.popularity[small_model.items.index("i1")])


def test_model_ping_health_and_openapi(served, small_model):
    info = httpx.get(f"{served.url}/model").json()
    assert info["registry_version"] == "1" and info["alias"] == "champion" and info["run_id"] == "test-run-0"
    assert (info["n_users"], info["n_items"]) == (small_model.n_users, small_model.n_items)
    assert info["metrics"] == {"ndcg_at_10": 0.5} and info["trained_at"].startswith("2024-01-01")
    assert httpx.get(f"{served.url}/ping").json() == {"status": "ok"}
    health = httpx.get(f"{served.url}/health").json()
    assert health["status"] == "ok" and health["redis"] == "up" and health["model_loaded"] is True
    assert REDIS_PASSWORD not in health["redis_url"] and "***" in health["redis_url"]
    spec = httpx.get(f"{served.url}/docs.json").json()
    for path in ("/recommend", "/recommend/batch", "/recommend/history", "/similar-items", "/score", "/model",
                 "/ping", "/health"):
        assert path in spec["paths"], path
    assert httpx.get(f"{served.url}/").status_code == 200


# -------------------------------------------------------------------------------------------------- errors
BAD_REQUESTS = [
    ("/recommend", {"user_id": "u1", "k": 0}, "k"),
    ("/recommend", {"user_id": "u1", "k": 501}, "k"),
    ("/recommend", {"user_id": "   "}, "user_id"),
    ("/recommend", {"user_id": True}, "user_id"),
    ("/recommend", {"user_id": 1.5}, "user_id"),
    ("/recommend", {"user_id": "u1", "k": "5"}, "k"),
    ("/recommend", {"user_id": "u1", "exclude_seen": "yes"}, "exclude_seen"),
    ("/recommend", {"user_id": "u1", "exclude_items": "i1"}, "exclude_items"),
    ("/recommend", {"k": 3}, "user_id"),
    ("/recommend", {"user_id": "u1", "userid": "u1"}, "userid"),
    ("/recommend/batch", {"user_ids": [], "k": 3}, "user_ids"),
    ("/recommend/batch", {"user_ids": [f"u{i}" for i in range(101)]}, "user_ids"),
    ("/recommend/history", {"items": [{"item_id": "i1", "value": -1}]}, "items"),
    ("/recommend/history", {"items": [{"value": 1}]}, "items"),
    ("/recommend/history", {"items": [{"item_id": "i1", "value": 1e308}]}, "items"),
    ("/similar-items", {"item_id": ""}, "item_id"),
    ("/similar-items", {"item_id": "i1", "k": -3}, "k"),
    ("/score", {"user_id": "u1", "item_ids": []}, "item_ids"),
    ("/score", {"user_id": "u1", "item_ids": [None]}, "item_ids"),
]


@pytest.mark.parametrize(("path", "body", "field"), BAD_REQUESTS)
def test_invalid_input_is_4xx_naming_the_field(served, path, body, field):
    resp = post(served, path, body)
    assert resp.status_code == 400, resp.text
    detail = resp.json()["detail"]
    assert any(d["loc"] and d["loc"][0] == field for d in detail), detail
    assert all(d["msg"] for d in detail)


def test_malformed_json_and_wrong_content_type(served):
    resp = httpx.post(f"{served.url}/recommend", content=b'{"user_id": ', headers={"content-type": "application/json"})
    assert resp.status_code == 400 and resp.json()["detail"][0]["type"] == "json_invalid"
    resp = httpx.post(f"{served.url}/recommend", content=b'{"user_id": "u1"}', headers={"content-type": "text/plain"})
    assert resp.status_code == 415 and resp.json()["detail"][0]["loc"] == ["header", "Content-Type"]
    resp = httpx.post(f"{served.url}/recommend", data={"user_id": "u1"})
    assert resp.status_code == 415


ODD_BODIES = [
    b"null", b"[]", b"42", b'"u1"', b"", b"{}", b'{"user_id": {"a": 1}}', b'{"user_id": [1]}',
    b'{"user_id": 123456789012345678901234567890}', b'{"user_id": "\u00e9\u0000\ud83c\udfb5"}',
    b'{"user_id": "u1", "k": 500, "exclude_items": [' + b",".join(str(i).encode() for i in range(1000)) + b"]}",
    b'{"user_id": "u1", "exclude_items": [' + b",".join(str(i).encode() for i in range(1001)) + b"]}",
    b'{"user_id": "u1", "include_items": []}', b'{"user_id": "u1", "k": 1e3}', b'{"user_id": -5, "k": 500}',
]


@pytest.mark.parametrize("path", ["/recommend", "/recommend/batch", "/recommend/history", "/similar-items", "/score"])
def test_no_input_produces_a_5xx(served, path):
    for body in ODD_BODIES:
        resp = httpx.post(f"{served.url}{path}", content=body, headers={"content-type": "application/json"}, timeout=30)
        assert resp.status_code < 500, (path, body[:80], resp.status_code, resp.text[:300])
        assert resp.headers["content-type"].startswith("application/json")


# --------------------------------------------------------------------------------------------- under load
async def _fire(url: str, bodies: list[tuple[str, dict]], connections: int) -> list[int]:
    # keep-alive shorter than the server's 5 s, so the client never reuses a connection the server is closing
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        gate = asyncio.Semaphore(connections)

        async def one(path, body):
            async with gate:
                try:
                    return (await client.post(path, json=body)).status_code
                except httpx.HTTPError:
                    return 0

        return list(await asyncio.gather(*(one(p, b) for p, b in bodies)))


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_concurrent_requests_are_batched_and_counted(served):
    bodies = [("/recommend", {"user_id": f"u{i % 60}", "k": 3 + i % 17, "exclude_seen": bool(i % 2)})
              for i in range(200)]
    codes = asyncio.run(_fire(served.url, bodies, 200))
    assert codes.count(200) == len(codes), {c: codes.count(c) for c in set(codes)}
    text = httpx.get(f"{served.url}/metrics").text
    assert _metric(text, "bentoml_service_adaptive_batch_size_count", method_name="recommend") > 0
    calls = _metric(text, "timbral_model_call_rows_count", method="recommend")
    rows = _metric(text, "timbral_model_call_rows_sum", method="recommend")
    assert 0 < calls < rows, "the API never sent concurrent rows to the model in one call"
    assert _metric(text, "timbral_cache_requests_total", endpoint="recommend") >= 200
    assert _metric(text, "timbral_recommendations_total", endpoint="recommend", strategy="personalized") > 0
    assert _metric(text, "timbral_responses_total", endpoint="/recommend", status="200") >= 200


def test_the_model_process_takes_json_and_refuses_pickle_on_its_socket(served):
    """The API→model hop is JSON: the model worker's own socket answers JSON rows and refuses a pickled body."""
    import pickle

    import psutil

    from loadtest.servers import server_pids

    model_pid = server_pids(served.proc.pid)["model"][0]
    sockets = {c.laddr for c in psutil.Process(model_pid).net_connections(kind="unix") if c.laddr}
    assert len(sockets) == 1, sockets
    transport = httpx.HTTPTransport(uds=sockets.pop())
    with httpx.Client(transport=transport, base_url="http://model") as client:
        ok = client.post("/recommend", json={"rows": [[0, 3, 1]]})
        assert ok.status_code == 200 and np.asarray(ok.json()).shape == (1, 3, 2)
        refused = client.post("/recommend", content=pickle.dumps({"rows": [[0, 3, 1]]}),
                              headers={"content-type": "application/vnd.bentoml+pickle"})
        assert refused.status_code == 415 and "pickled" in refused.json()["error"]


def test_the_model_service_batches_concurrent_calls_adaptively(served):
    """Calls from several API workers (or replicas) reach the model service at once: its adaptive batcher
    merges them. 64 concurrent one-row calls straight to its socket must form at least one batch of several."""
    import psutil

    from loadtest.servers import server_pids

    model_pid = server_pids(served.proc.pid)["model"][0]
    (socket,) = {c.laddr for c in psutil.Process(model_pid).net_connections(kind="unix") if c.laddr}

    async def fire() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=socket), base_url="http://model",
                                     timeout=60) as client:
            answers = await asyncio.gather(*(client.post("/similar", json={"rows": [[i % 40, 3]]})
                                             for i in range(64)))
        return [a.status_code for a in answers]

    before = httpx.get(f"{served.url}/metrics").text
    assert asyncio.run(fire()) == [200] * 64
    after = httpx.get(f"{served.url}/metrics").text
    hist = "bentoml_service_adaptive_batch_size"

    def grown(name: str, **labels: str) -> float:
        return _metric(after, name, method_name="similar", **labels) - _metric(before, name, method_name="similar", **labels)

    batches, singles = grown(f"{hist}_count"), grown(f"{hist}_bucket", le="1.0")
    assert 0 < batches < 64 and batches > singles, (batches, singles)


def test_burst_of_2000_requests_at_64_connections_all_answered(served):
    rng = np.random.default_rng(3)
    bodies = []
    for i in range(2000):
        kind = i % 4
        if kind == 3:
            bodies.append(("/recommend/batch", {"user_ids": [f"u{j}" for j in rng.integers(0, 70, 5)], "k": 5}))
        else:
            user = f"u{rng.integers(0, 70)}"  # ~15 % unknown users
            bodies.append(("/recommend", {"user_id": user, "k": int(rng.integers(1, 40))}))
    codes = asyncio.run(_fire(served.url, bodies, 64))
    assert codes.count(200) == 2000, {c: codes.count(c) for c in set(codes)}


def test_logs_are_json_lines_without_secrets(served):
    post(served, "/recommend", {"user_id": "u1"}, headers={"x-request-id": "trace-me-123"})
    time.sleep(0.5)
    text = served.log_path.read_text(errors="replace")
    assert REDIS_PASSWORD not in text
    assert re.search(r'\{"ts": .*"request_id": "trace-me-123".*"endpoint": "/recommend".*"latency_ms"', text)


def test_valid_bodies_take_the_direct_lane_and_invalid_ones_bentomls_route(served):
    """service.direct_answers is installed in a served bento: a valid body is answered by it (its log line says
    so); a body that does not validate reaches BentoML's route and gets BentoML's field-by-field 400."""
    import json

    fresh = {"user_id": "u4", "k": 4, "exclude_items": [f"never-cached-{time.time_ns()}"]}  # not a cache hit
    valid = post(served, "/recommend", fresh, headers={"x-request-id": "lane-valid-1"})
    invalid = post(served, "/recommend", {"user_id": "u4", "k": 0}, headers={"x-request-id": "lane-invalid-1"})
    assert valid.status_code == 200 and len(valid.json()["items"]) == 4
    assert invalid.status_code == 400 and invalid.json()["detail"][0]["loc"] == ["k"]
    time.sleep(0.5)
    lines = {}
    for line in served.log_path.read_text(errors="replace").splitlines():
        if '"request_id": "lane-' in line:
            entry = json.loads(line)
            lines[entry["request_id"]] = entry
    assert lines["lane-valid-1"]["lane"] == "direct" and lines["lane-valid-1"]["status"] == 200
    assert "lane" not in lines["lane-invalid-1"] and lines["lane-invalid-1"]["status"] == 400


# ------------------------------------------------------------------------------------------------- faults
def _wait_until(predicate, timeout: float = 20.0, step: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def test_redis_killed_and_restarted(served, module_redis):
    module_redis.stop()
    try:
        for i in range(30):
            resp = post(served, "/recommend", {"user_id": f"u{i}", "k": 4})
            assert resp.status_code == 200 and resp.json()["cached"] is False
        batch = post(served, "/recommend/batch", {"user_ids": ["u1", "u2"], "k": 3})
        assert batch.status_code == 200
        health = httpx.get(f"{served.url}/health").json()
        assert health["status"] == "degraded" and health["redis"] == "down"
        assert REDIS_PASSWORD not in str(health)
    finally:
        module_redis.start()
    body = {"user_id": "u42", "k": 9}

    def cached_again() -> bool:
        post(served, "/recommend", body)
        return post(served, "/recommend", body).json()["cached"] is True

    assert _wait_until(cached_again), "caching did not resume after Redis came back"
    # each API worker finds Redis again on its own: one still in its back-off (at most 5 s) reports degraded
    assert _wait_until(lambda: all(httpx.get(f"{served.url}/health").json()["status"] == "ok" for _ in range(6)))


def test_new_model_version_does_not_see_old_cache(served, bentoml_home, int_model_tag, int_model, module_redis,
                                                    tmp_path):
    body = {"user_id": 3, "k": 5}
    post(served, "/recommend", body)
    # an API worker still in back-off from the Redis restart above answers uncached for up to 5 s
    assert _wait_until(lambda: post(served, "/recommend", body).json()["cached"] is True)
    with BentoServer("service:Timbral", bentoml_home, env=serve_env(int_model_tag, module_redis.url),
                     log_path=tmp_path / "v2.log") as v2:
        fresh = post(v2, "/recommend", body).json()
        assert fresh["cached"] is False and fresh["model_version"] == "2" and fresh["strategy"] == "personalized"
        assert fresh["user_id"] == 3 and all(isinstance(it["item_id"], int) for it in fresh["items"])
        assert_items_match(fresh, core_answer(int_model, 3, 5))
        assert post(v2, "/recommend", {"user_id": "3", "k": 5}).json()["strategy"] == "personalized"
