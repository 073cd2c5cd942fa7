"""service.cache against a real throwaway redis-server: hits, TTL, namespaces, outages, slowness, recovery."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from service.cache import ResponseCache, request_digest
from tests.servers import RedisServer


def make(url: str, **kw) -> ResponseCache:
    kw.setdefault("timeout_ms", 50)
    kw.setdefault("backoff_min", 0.2)
    kw.setdefault("backoff_max", 0.8)
    return ResponseCache(url, **kw)


def test_digest_is_order_independent():
    assert request_digest({"a": 1, "b": [1, "x"]}) == request_digest({"b": [1, "x"], "a": 1})
    assert request_digest({"user_id": 1}) != request_digest({"user_id": "1"})


def test_miss_then_hit_and_namespaces(redis_server):
    async def scenario():
        cache = make(redis_server.url)
        req = {"user_id": "u1", "k": 10}
        v1, v2 = cache.key("timbral-nmf:v1", "recommend", req), cache.key("timbral-nmf:v2", "recommend", req)
        assert v1 != v2 and v1.startswith("timbral:timbral-nmf:v1:recommend:")
        assert await cache.get(v1, "recommend") is None
        assert await cache.set(v1, {"items": [1, 2], "strategy": "personalized"})
        assert await cache.get(v1, "recommend") == {"items": [1, 2], "strategy": "personalized"}
        assert await cache.get(v2, "recommend") is None  # another model version never sees it
        assert await cache.get_many([v1, v2]) == [{"items": [1, 2], "strategy": "personalized"}, None]
        assert await cache.status() == "up"
        await cache.close()

    asyncio.run(scenario())


def test_entries_expire_after_ttl(redis_server):
    async def scenario():
        cache = make(redis_server.url, ttl=1)
        await cache.set("k", {"v": 1})
        assert await cache.get("k") == {"v": 1}
        await asyncio.sleep(1.3)
        assert await cache.get("k") is None
        await cache.close()

    asyncio.run(scenario())


def test_redis_killed_then_back_on_the_same_port(redis_server):
    async def scenario():
        cache = make(redis_server.url)
        await cache.set("k", {"v": 1})
        redis_server.stop()
        started = time.perf_counter()
        assert await cache.get("k") is None  # no exception
        assert await cache.set("k2", {"v": 2}) is False
        assert cache.state == "down" and cache.last_error
        assert await cache.status() == "down"
        for _ in range(100):  # in back-off: not even tried, so instant
            assert await cache.get("k") is None
        assert time.perf_counter() - started < 1.0
        redis_server.start()
        deadline = time.monotonic() + 10
        while await cache.status() != "up":
            assert time.monotonic() < deadline, "cache did not resume"
            await asyncio.sleep(0.1)
        assert await cache.set("k3", {"v": 3}) and await cache.get("k3") == {"v": 3}
        await cache.close()

    asyncio.run(scenario())


def test_redis_down_at_start(tmp_path):
    from training.local_stack import free_port

    async def scenario():
        cache = make(f"redis://127.0.0.1:{free_port()}/0")
        assert await cache.get("k") is None and await cache.status() == "down"
        await cache.close()

    asyncio.run(scenario())


def test_slow_redis_is_cut_off_by_the_timeout(redis_server):
    async def scenario():
        cache = make(redis_server.url, timeout_ms=50)
        await cache.set("k", {"v": 1})
        os.kill(redis_server.proc.pid, signal.SIGSTOP)  # Redis hangs: accepts nothing, answers nothing
        try:
            started = time.perf_counter()
            assert await cache.get("k") is None
            assert time.perf_counter() - started < 0.5
            assert cache.state == "down"
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while await cache.get("k") != {"v": 1}:
            assert time.monotonic() < deadline, "cache did not resume after Redis woke up"
            await asyncio.sleep(0.1)
        await cache.close()

    asyncio.run(scenario())


def test_only_one_probe_after_back_off(redis_server):
    async def scenario():
        cache = make(redis_server.url, backoff_min=0.1)
        redis_server.stop()
        await cache.get("k")
        await asyncio.sleep(0.15)
        calls = 0
        original = cache._make_client

        def counting():
            nonlocal calls
            calls += 1
            return original()

        cache._make_client = counting
        await asyncio.gather(*(cache.get("k") for _ in range(20)))
        assert calls == 1
        await cache.close()

    asyncio.run(scenario())


def test_password_url(tmp_path):
    server = RedisServer(tmp_path / "redis", password="pa55-w0rd").start()
    try:
        async def scenario():
            good = make(server.url)
            await good.set("k", {"v": 1})
            assert await good.get("k") == {"v": 1}
            assert "pa55-w0rd" not in good.url_redacted
            wrong = make(server.url.replace("pa55-w0rd", "nope-nope"))
            assert await wrong.get("k") is None and wrong.state == "down"
            assert "nope-nope" not in (wrong.last_error or "")
            await good.close()
            await wrong.close()

        asyncio.run(scenario())
    finally:
        server.stop()


def test_disabled_cache_never_connects():
    async def scenario():
        cache = make("redis://127.0.0.1:1/0", enabled=False)
        assert await cache.get("k") is None and await cache.set("k", {}) is False
        assert await cache.status() == "disabled" and cache._client is None

    asyncio.run(scenario())


@pytest.mark.parametrize("ttl", [1, 300])
def test_from_settings(monkeypatch, ttl):
    from service.settings import Settings

    monkeypatch.setenv("CACHE_TTL", str(ttl))
    monkeypatch.setenv("REDIS_TIMEOUT_MS", "75")
    monkeypatch.setenv("ENABLE_CACHING", "false")
    cache = ResponseCache.from_settings(Settings())
    assert (cache.ttl, cache.timeout, cache.enabled, cache.state) == (ttl, 0.075, False, "disabled")
