"""Cached answers served at the front door: a repeated request body is answered from Redis as stored bytes.

``service.answers`` caches answers by their *validated* request, which a request reaches only after BentoML has
routed it, validated it into a model, called our endpoint and serialised the answer — most of a cache hit's
cost. This ASGI middleware sits in front of all that for the cacheable POST endpoints:

* it keys the raw body: ``timbral:<model namespace>:body:<path>:<sha256 of the body>``; the namespace is the
  served model's, so a new model never reads an old one's bytes;
* a hit is answered at once with the stored JSON (``"cached": true``), counted as a cache hit of its endpoint;
* a miss goes through the service unchanged; a 200 answer is then stored under the body's key (with
  ``"cached": true``) after the client has it, so the next identical body is a hit.

Different bodies with the same meaning (key order, defaults spelled out) still share the validated entry
behind this one. Redis failures and back-off are ``RedisLink``'s: a failed lookup is a miss, never an error.
Caching off (``ENABLE_CACHING=false``) turns this off too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from service.guard import read_body, replay_body
from service.logs import annotate, send_json_bytes
from service.metrics import count_cache

CACHEABLE = {"/recommend": "recommend", "/recommend/history": "recommend/history",
             "/similar-items": "similar-items", "/score": "score"}


class CachedAnswers:
    """``get_front()`` gives ``(ResponseCache, model namespace)`` of the running service, or ``None`` before it."""

    def __init__(self, app, get_front: Callable[[], tuple[Any, str] | None], paths: dict[str, str] = CACHEABLE) -> None:
        self.app, self.get_front, self.paths = app, get_front, paths

    async def __call__(self, scope, receive, send) -> None:
        endpoint = self.paths.get(scope.get("path", "")) if scope["type"] == "http" else None
        front = self.get_front() if endpoint and scope.get("method") == "POST" else None
        cache = front[0] if front else None
        if cache is None or not cache.enabled:
            return await self.app(scope, receive, send)
        body = await read_body(receive)  # GuardMiddleware, outside this one, has enforced the size limit
        if body is None:
            return None  # the client went away before sending its body
        key = cache.body_key(front[1], scope["path"], body)
        stored = await cache.call(lambda client: client.get(key))
        if stored is not None:
            count_cache(endpoint, "hit")
            annotate(cache="hit", front=True)
            await send_json_bytes(send, 200, stored)
            return None

        status, chunks = {"code": 0}, []

        async def keep(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "http.response.body" and status["code"] == 200:
                chunks.append(message.get("body", b""))
            await send(message)

        await self.app(scope, replay_body(body, receive), keep)
        if status["code"] == 200 and chunks:
            answer = _as_cached(b"".join(chunks))
            if answer is not None:
                await cache.call(lambda client: client.set(key, answer, ex=cache.ttl))


def _as_cached(payload: bytes) -> bytes | None:
    try:
        answer = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(answer, dict) or "cached" not in answer:
        return None
    answer["cached"] = True
    return json.dumps(answer, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

