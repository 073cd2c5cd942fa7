"""service.guard: body size limit, client identity, rate limiter on a real redis-server, fail-open, JSON errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from service.cache import RedisLink, ResponseCache
from service.guard import GuardMiddleware, RateLimiter, client_identity


def run(coro):
    return asyncio.run(coro)


# ------------------------------------------------------------------------------------------------- plumbing
class App:
    """Reads the whole body and echoes its length (or answers ``status`` with a plain-text body)."""

    def __init__(self, status: int = 200, content_type: bytes = b"application/json", body: bytes | None = None):
        self.status, self.content_type, self.body, self.seen = status, content_type, body, None

    async def __call__(self, scope, receive, send):
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        self.seen = b"".join(chunks)
        payload = self.body if self.body is not None else json.dumps({"length": len(self.seen)}).encode()
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", self.content_type), (b"allow", b"POST")]})
        await send({"type": "http.response.body", "body": payload})


def call(mw, *, path="/recommend", method="POST", headers=(), chunks=(b"{}",), client=("10.1.1.1", 5000)):
    sent, pending = [], list(chunks)

    async def receive():
        if pending:
            body = pending.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(pending)}
        await asyncio.sleep(3600)  # like a server: nothing more until the client goes away

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": list(headers), "client": client}
    run(mw(scope, receive, send))
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), json.loads(body) if body else None


class FakeLimiter:
    enabled, rule = True, "2 per 1 minute"

    def __init__(self, allowed=True, state="ok", retry_after=7):
        self.allowed, self.state, self.retry_after, self.keys = allowed, state, retry_after, []

    async def hit(self, identity):
        from service.guard import Decision

        self.keys.append(identity)
        return Decision(self.allowed, self.state, self.retry_after)


def guard(app=None, limiter=None, max_body=1000, trust=False):
    return GuardMiddleware(app or App(), max_body=max_body, limiter=lambda: limiter, trust_forwarded_for=trust)


# ------------------------------------------------------------------------------------------------------ size
def test_declared_size_over_the_limit_is_413_before_reading():
    app = App()
    status, headers, body = call(guard(app), headers=[(b"content-length", b"1001")], chunks=[b"x" * 1001])
    assert status == 413 and headers[b"content-type"] == b"application/json" and app.seen is None
    assert body["detail"][0]["type"] == "request_too_large" and "MAX_REQUEST_SIZE = 1000" in body["error"]
    assert call(guard(app), headers=[(b"content-length", b"1000")], chunks=[b"x" * 1000])[2] == {"length": 1000}


def test_streamed_body_is_counted_and_replayed():
    app = App()
    status, _, body = call(guard(app), chunks=[b"x" * 400] * 3)  # no Content-Length: chunked
    assert status == 413 and body["detail"][0]["loc"] == ["body"] and app.seen is None
    status, _, body = call(guard(app), chunks=[b'{"a": ', b"1}"])
    assert status == 200 and app.seen == b'{"a": 1}'


def test_bad_content_length_is_400():
    status, _, body = call(guard(), headers=[(b"content-length", b"12abc")])
    assert status == 400 and body["detail"][0]["loc"] == ["header", "Content-Length"]


# ------------------------------------------------------------------------------------------------- identity
def test_client_identity():
    scope = {"client": ("10.0.0.9", 1234)}
    assert client_identity(scope, {}, False) == "addr:10.0.0.9"
    forwarded = {"x-forwarded-for": "1.2.3.4, 172.16.0.5"}
    assert client_identity(scope, forwarded, False) == "addr:10.0.0.9"  # not behind a trusted proxy: ignored
    assert client_identity(scope, forwarded, True) == "addr:172.16.0.5"  # the hop the proxy added
    keyed = client_identity(scope, {"x-api-key": "s3cret-key", **forwarded}, True)
    assert keyed.startswith("key:") and "s3cret" not in keyed and len(keyed) == 36
    assert keyed != client_identity(scope, {"x-api-key": "other-key"}, True)
    assert client_identity({}, {}, False) == "addr:unknown"


# ----------------------------------------------------------------------------------------------- rate limit
def test_429_with_retry_after_and_json_and_exempt_paths():
    limiter = FakeLimiter(allowed=False)
    status, headers, body = call(guard(limiter=limiter), headers=[(b"x-api-key", b"k1")])
    assert status == 429 and headers[b"retry-after"] == b"7"
    assert body["detail"][0] == {"loc": ["header", "X-API-Key"], "msg": body["error"], "type": "rate_limited"}
    assert "2 per 1 minute" in body["error"]
    for path in ("/livez", "/readyz", "/healthz", "/metrics", "/health", "/ping", "/", "/docs.json",
                 "/static_content/index.css"):
        assert call(guard(limiter=limiter), path=path, method="GET", chunks=[b""])[0] == 200, path
    assert len(limiter.keys) == 1


def test_failing_open_and_no_limiter_let_requests_through():
    assert call(guard(limiter=FakeLimiter(allowed=True, state="failing-open")))[0] == 200
    assert call(guard(limiter=None))[0] == 200  # before the service instance exists


def test_router_misses_become_json_errors():
    status, headers, body = call(guard(App(405, b"text/plain", b"Method Not Allowed")), method="GET")
    assert status == 405 and body["detail"][0]["type"] == "method_not_allowed" and "use POST" in body["error"]
    assert headers[b"allow"] == b"POST"
    status, _, body = call(guard(App(404, b"application/json", b'{"detail": "Not Found"}')), path="/nope")
    assert status == 404 and body["error"] == "no such route: POST /nope"
    ours = b'{"error": "item x is not known", "detail": []}'
    assert call(guard(App(404, b"application/json", ours)))[2] == json.loads(ours)  # our own 404 untouched


# --------------------------------------------------------------------------------- the limiter on real Redis
def limiter_on(url: str, limit: str = "3/minute", timeout_ms: int = 2000, **kw) -> RateLimiter:
    # a generous timeout where Redis is meant to answer: a busy CI machine can take more than 50 ms
    return RateLimiter(RedisLink(url, timeout_ms=timeout_ms, backoff_min=0.2, backoff_max=0.8), limit, **kw)


def test_moving_window_shared_by_replicas(redis_server):
    async def scenario():
        a, b = limiter_on(redis_server.url), limiter_on(redis_server.url)  # two replicas, one Redis
        decisions = [await a.hit("addr:1"), await b.hit("addr:1"), await a.hit("addr:1"), await b.hit("addr:1")]
        assert [d.allowed for d in decisions] == [True, True, True, False]
        assert 50 <= decisions[-1].retry_after <= 60 and decisions[-1].state == "ok"
        assert (await a.hit("addr:2")).allowed  # another client, another window
        assert await a.status() == "ok"
        await a.close()
        await b.close()

    run(scenario())


def test_fails_open_when_redis_is_down_or_hangs(redis_server):
    async def scenario():
        limiter = limiter_on(redis_server.url, "1/minute", timeout_ms=50)
        assert (await limiter.hit("addr:1")).allowed and not (await limiter.hit("addr:1")).allowed
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            started = time.perf_counter()
            decisions = [await limiter.hit("addr:1") for _ in range(50)]
            assert time.perf_counter() - started < 0.5  # one timeout, then back-off: not tried at all
            assert all(d.allowed and d.state == "failing-open" for d in decisions)
            assert await limiter.status() == "failing-open"
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while await limiter.status() != "ok":
            assert time.monotonic() < deadline, "the limiter did not resume"
            await asyncio.sleep(0.1)
        assert not (await limiter.hit("addr:1")).allowed  # the window survived the pause
        await limiter.close()

    run(scenario())


def test_disabled_limiter_never_touches_redis():
    async def scenario():
        limiter = limiter_on("redis://127.0.0.1:1/0", enabled=False)
        decision = await limiter.hit("addr:1")
        assert decision.allowed and decision.state == "disabled" and await limiter.status() == "disabled"
        assert limiter.link._client is None

    run(scenario())


def test_from_settings_shares_the_cache_link_only_when_caching(monkeypatch):
    from service.settings import Settings

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    cache = ResponseCache.from_settings(Settings())
    assert RateLimiter.from_settings(Settings(), cache).link is cache
    monkeypatch.setenv("ENABLE_CACHING", "false")
    monkeypatch.setenv("RATE_LIMIT", "7/second")
    off = ResponseCache.from_settings(Settings())
    limiter = RateLimiter.from_settings(Settings(), off)
    assert limiter.link is not off and limiter.rule == "7 per 1 second"


@pytest.mark.parametrize("value", ["", "lots", "0/minute", "1/minute;5/hour", "5/fortnight"])
def test_bad_rate_limits_are_refused(monkeypatch, value):
    from pydantic import ValidationError

    from service.settings import Settings

    monkeypatch.setenv("RATE_LIMIT", value)
    with pytest.raises(ValidationError, match="rate_limit"):
        Settings()


# ------------------------------------------------------------------- the shared Redis link under overload
def test_a_busy_event_loop_is_not_a_redis_outage():
    async def scenario():
        link = RedisLink("redis://127.0.0.1:1/0", timeout_ms=50)

        async def loop_blocked(client):
            time.sleep(0.2)  # this process is busy: the timeout can only fire ~150 ms late
            await asyncio.sleep(1)

        async def redis_hangs(client):
            await asyncio.sleep(1)

        assert await link.call(loop_blocked) is None and link.state == "up"
        assert await link.call(redis_hangs) is None and link.state == "down"  # on time: Redis is to blame

    run(scenario())


def test_a_late_failure_from_a_replaced_pool_does_not_end_the_new_one():
    async def scenario():
        link = RedisLink("redis://127.0.0.1:1/0", timeout_ms=1000)
        gate = asyncio.Event()

        async def old_pool_call(client):
            await gate.wait()
            raise ConnectionError("Connection closed by server.")

        pending = asyncio.get_running_loop().create_task(link.call(old_pool_call))
        await asyncio.sleep(0.01)
        link._client = fresh = link._make_client()  # meanwhile an outage and a recovery made a new pool
        gate.set()
        assert await pending is None
        assert link.state == "up" and link._client is fresh

    run(scenario())


def test_an_exhausted_pool_is_not_an_outage():
    from redis.exceptions import MaxConnectionsError

    async def scenario():
        link = RedisLink("redis://127.0.0.1:1/0")

        async def burst(client):
            raise MaxConnectionsError("Too many connections")

        assert await link.call(burst) is None and link.state == "up"

    run(scenario())
