"""service.cache_front against a real throwaway redis-server: repeated bodies answered from stored bytes."""

from __future__ import annotations

import asyncio
import json

import pytest

from service.cache import ResponseCache
from service.cache_front import CachedAnswers


class Downstream:
    """The service behind the middleware: answers ``{"n": <call number>, "cached": false}`` with ``status``, in
    one body message or in two (``chunks=2``)."""

    def __init__(self, status: int = 200, chunks: int = 1) -> None:
        self.calls, self.bodies, self.status, self.chunks = 0, [], status, chunks

    async def __call__(self, scope, receive, send) -> None:
        message = await receive()
        self.bodies.append(message["body"])
        self.calls += 1
        payload = json.dumps({"n": self.calls, "cached": False}).encode()
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-type", b"application/json")]})
        parts = [payload] if self.chunks == 1 else [payload[:5], payload[5:]]
        for i, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})


async def post(app, body: bytes, path: str = "/recommend", method: str = "POST", split: bool = False):
    sent = []
    pieces = [body[:3], body[3:]] if split else [body]
    queue = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app({"type": "http", "method": method, "path": path, "headers": []}, receive, send)
    status = sent[0]["status"]
    return status, json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def front(cache: ResponseCache, namespace: str = "timbral-nmf:1", **kw):
    down = Downstream(**kw)
    return down, CachedAnswers(down, lambda: (cache, namespace))


def test_a_repeated_body_is_answered_from_redis_without_reaching_the_service(redis_server):
    async def scenario():
        cache = ResponseCache(redis_server.url, ttl=60, timeout_ms=500)
        down, app = front(cache)
        body = b'{"user_id": "u1", "k": 5}'
        assert await post(app, body, split=True) == (200, {"n": 1, "cached": False})
        assert down.bodies == [body]  # the service got the whole body, though it came in two pieces
        assert await post(app, body) == (200, {"n": 1, "cached": True})
        assert down.calls == 1
        assert (await post(app, b'{"user_id": "u2", "k": 5}'))[1] == {"n": 2, "cached": False}
        keys = await cache.call(lambda client: client.keys("timbral:timbral-nmf:1:body:/recommend:*"))
        assert len(keys) == 2 and 0 < await cache.call(lambda client: client.ttl(keys[0])) <= 60
        await cache.close()

    asyncio.run(scenario())


def test_answers_are_kept_per_model_version_and_per_path(redis_server):
    async def scenario():
        cache = ResponseCache(redis_server.url, timeout_ms=500)
        down = Downstream()
        versions = {"ns": "timbral-nmf:1"}
        app = CachedAnswers(down, lambda: (cache, versions["ns"]))
        body = b'{"user_id": "u1"}'
        await post(app, body)
        versions["ns"] = "timbral-nmf:2"
        assert (await post(app, body))[1]["cached"] is False  # a new model never reads the old one's bytes
        assert (await post(app, body, path="/score"))[1]["cached"] is False
        assert down.calls == 3
        await cache.close()

    asyncio.run(scenario())


def test_a_streamed_answer_is_stored_whole(redis_server):
    async def scenario():
        cache = ResponseCache(redis_server.url, timeout_ms=500)
        down, app = front(cache, chunks=2)
        await post(app, b"{}")
        assert await post(app, b"{}") == (200, {"n": 1, "cached": True})
        await cache.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("status", [400, 404, 503])
def test_errors_are_never_stored(redis_server, status):
    async def scenario():
        cache = ResponseCache(redis_server.url, timeout_ms=500)
        down, app = front(cache, status=status)
        for _ in range(2):
            assert (await post(app, b'{"user_id": 1}'))[0] == status
        assert down.calls == 2
        assert await cache.call(lambda client: client.dbsize()) == 0
        await cache.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(("path", "method"), [("/recommend/batch", "POST"), ("/model", "GET"), ("/other", "POST")])
def test_other_routes_and_methods_pass_through(redis_server, path, method):
    async def scenario():
        cache = ResponseCache(redis_server.url, timeout_ms=500)
        down, app = front(cache)
        for _ in range(2):
            await post(app, b"{}", path=path, method=method)
        assert down.calls == 2 and await cache.call(lambda client: client.dbsize()) == 0
        await cache.close()

    asyncio.run(scenario())


def test_caching_off_or_no_service_yet_passes_through():
    async def scenario():
        off = ResponseCache("redis://127.0.0.1:1/0", enabled=False)
        down, app = front(off)
        await post(app, b"{}")
        await post(app, b"{}")
        assert down.calls == 2
        early = Downstream()
        assert (await post(CachedAnswers(early, lambda: None), b"{}"))[0] == 200 and early.calls == 1

    asyncio.run(scenario())


def test_redis_unreachable_is_a_miss_not_an_error():
    async def scenario():
        cache = ResponseCache("redis://127.0.0.1:1/0", timeout_ms=100)  # nothing listens on port 1
        down, app = front(cache)
        assert await post(app, b'{"user_id": "u1"}') == (200, {"n": 1, "cached": False})
        assert await post(app, b'{"user_id": "u1"}') == (200, {"n": 2, "cached": False})
        assert cache.state == "down"

    asyncio.run(scenario())


def test_a_client_gone_before_its_body_reaches_nobody(redis_server):
    async def scenario():
        cache = ResponseCache(redis_server.url, timeout_ms=500)
        down, app = front(cache)
        sent = []

        async def receive():
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await app({"type": "http", "method": "POST", "path": "/recommend", "headers": []}, receive, send)
        assert down.calls == 0 and sent == []
        await cache.close()

    asyncio.run(scenario())
