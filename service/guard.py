"""Request guards of the API service: a body size limit and a per-client rate limit, as one ASGI middleware.

* **Size** (``MAX_REQUEST_SIZE`` bytes, default 1 MiB): a declared ``Content-Length`` above the limit is answered
  413 before any byte of the body is read; a body without one (chunked) is read up to the limit, counting bytes,
  and answered 413 as soon as it goes over — before BentoML parses anything. A ``Content-Length`` that is not a
  number is a 400.
* **Rate** (``RATE_LIMIT``, default ``100/minute``, moving window): one window per client, kept in Redis by the
  ``limits`` library so that every replica counts against the same window. The client is the ``X-API-Key``
  header (stored hashed, never in clear) or else the peer address — the last ``X-Forwarded-For`` entry, the one
  the trusted proxy added, when ``TRUST_FORWARDED_FOR=true`` (only behind nginx: otherwise clients could pick
  their own key). Over the limit: 429 with ``Retry-After`` (seconds) and a JSON body. Probe, metrics and docs
  routes are never limited.
* Redis calls go through the cache's ``RedisLink`` (same timeout and back-off); when Redis fails or is in
  back-off the limiter **fails open** (requests pass) and ``/health`` says ``rate_limit: "failing-open"``.
  ``RATE_LIMIT_ENABLED=false`` switches the limiter off (load tests).

Errors have the shape of every other error of the API: ``{"error": ..., "detail": [{"loc", "msg", "type"}]}``;
the router's own 404/405 answers (plain text from Starlette, ``{"detail": ...}`` from FastAPI) are rewritten
into that shape too.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.cache import UP, RedisLink, ResponseCache
from service.logs import annotate, send_json
from service.metrics import count_rate_limit
from service.settings import Settings

OK, FAILING_OPEN, DISABLED = "ok", "failing-open", "disabled"
# probes, metrics and docs: never rate limited (the Swagger UI's own assets neither)
EXEMPT_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics", "/health", "/ping", "/", "/docs.json"})
EXEMPT_PREFIXES = ("/static_content/",)
API_KEY_HEADER = "x-api-key"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    state: str  # ok | failing-open | disabled
    retry_after: int = 0


class RateLimiter:
    """A moving-window limit per client identity, stored in Redis through a ``RedisLink``."""

    def __init__(self, link: RedisLink, limit: str = "100/minute", *, enabled: bool = True,
                 key_prefix: str = "timbral-ratelimit") -> None:
        from limits import parse

        self.link, self.enabled, self.key_prefix = link, bool(enabled), key_prefix
        self.item = parse(limit)
        self.rule = str(self.item)
        self._strategy = None
        self._strategy_client = None
        if self.enabled:
            # the first RedisStorage resolves its client library (~1 s of imports): here, not inside a 50 ms call
            import redis.asyncio as aioredis

            self._new_strategy(aioredis.ConnectionPool())

    @classmethod
    def from_settings(cls, settings: Settings, cache: ResponseCache | None = None) -> RateLimiter:
        """Shares the cache's connection and back-off when caching is on; has a link of its own otherwise."""
        if cache is not None and cache.enabled:
            link: RedisLink = cache
        else:
            link = RedisLink(settings.redis_url, timeout_ms=settings.redis_timeout_ms)
        return cls(link, settings.rate_limit, enabled=settings.rate_limit_enabled)

    def _new_strategy(self, pool):
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import MovingWindowRateLimiter

        # the URL is a placeholder: the connection (and its credentials) come from the link's pool
        storage = RedisStorage("async+redis://", implementation="redispy", key_prefix=self.key_prefix,
                               connection_pool=pool)
        return MovingWindowRateLimiter(storage)

    def _strategy_for(self, client):
        """A ``limits`` moving-window strategy over the link's current pool (rebuilt when the link makes a new one)."""
        if self._strategy_client is not client:
            self._strategy, self._strategy_client = self._new_strategy(client.connection_pool), client
        return self._strategy

    async def hit(self, identity: str) -> Decision:
        if not self.enabled:
            return Decision(True, DISABLED)
        allowed = await self.link.call(lambda client: self._strategy_for(client).hit(self.item, identity))
        if allowed is None:  # Redis failed, timed out or is in back-off: fail open
            count_rate_limit(FAILING_OPEN)
            return Decision(True, FAILING_OPEN)
        if allowed:
            count_rate_limit("allowed")
            return Decision(True, OK)
        count_rate_limit("limited")
        return Decision(False, OK, await self._retry_after(identity))

    async def _retry_after(self, identity: str) -> int:
        window = self.item.get_expiry()
        stats = await self.link.call(lambda client: self._strategy_for(client).get_window_stats(self.item, identity))
        if stats is None:
            return window
        return max(1, min(window, math.ceil(stats.reset_time - time.time())))

    async def status(self) -> str:
        """``disabled``, ``ok`` or ``failing-open`` (pings Redis unless the link is in back-off)."""
        if not self.enabled:
            return DISABLED
        return OK if await self.link.ping() == UP else FAILING_OPEN

    async def close(self) -> None:
        if not isinstance(self.link, ResponseCache):  # the cache closes itself
            await self.link.close()


def client_identity(scope: dict[str, Any], headers: dict[str, str], trust_forwarded_for: bool) -> str:
    """``key:<sha256 of X-API-Key>`` or ``addr:<client address>``."""
    api_key = headers.get(API_KEY_HEADER, "").strip()
    if api_key:
        return "key:" + hashlib.sha256(api_key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    if trust_forwarded_for:
        hops = [h.strip() for h in headers.get("x-forwarded-for", "").split(",") if h.strip()]
        if hops:
            return "addr:" + hops[-1][:64]  # the hop our proxy added; earlier ones are the client's say-so
    client = scope.get("client")
    return "addr:" + (str(client[0]) if client else "unknown")


class TooLarge(Exception):
    pass


class GuardMiddleware:
    """ASGI middleware: 413 for bodies over ``max_body`` bytes, 429 for clients over the rate limit.

    ``limiter`` is a callable returning the service instance's ``RateLimiter`` (or ``None`` before the instance
    exists): middleware are built before the service instance, whose Redis link lives in the worker's loop.
    """

    def __init__(self, app, *, max_body: int, limiter: Callable[[], RateLimiter | None],
                 trust_forwarded_for: bool = False, exempt_paths: frozenset[str] = EXEMPT_PATHS) -> None:
        self.app, self.max_body, self.get_limiter = app, int(max_body), limiter
        self.trust_forwarded_for, self.exempt_paths = bool(trust_forwarded_for), exempt_paths

    def exempt(self, path: str) -> bool:
        return path in self.exempt_paths or path.startswith(EXEMPT_PREFIXES)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        declared = headers.get("content-length")
        if declared is not None:
            declared = declared.strip()
            if not declared.isdigit():
                return await _error(send, 400, "Content-Length must be a non-negative integer",
                                    ["header", "Content-Length"], "invalid_content_length")
            if int(declared) > self.max_body:
                return await self._too_large(send, f"declared {int(declared)} bytes")

        limiter = None if self.exempt(scope.get("path", "")) else self.get_limiter()
        if limiter is not None and limiter.enabled:
            decision = await limiter.hit(client_identity(scope, headers, self.trust_forwarded_for))
            if decision.state == FAILING_OPEN:
                annotate(rate_limit=FAILING_OPEN)
            if not decision.allowed:
                annotate(rate_limit="limited")
                return await _error(
                    send, 429, f"rate limit exceeded: at most {limiter.rule} per client; retry in "
                    f"{decision.retry_after} s", ["header", "X-API-Key"] if API_KEY_HEADER in headers else ["client"],
                    "rate_limited", extra_headers=[(b"retry-after", str(decision.retry_after).encode())])

        if declared is None and scope.get("method") not in ("GET", "HEAD", "OPTIONS"):
            # no declared length (chunked, or none at all): read it here, counting, before anyone parses it
            try:
                body = await read_body(receive, self.max_body)
            except TooLarge:
                return await self._too_large(send, "streamed")
            if body is None:
                return None  # the client went away: nobody left to answer
            receive = replay_body(body, receive)
        await self.app(scope, receive, _routing_errors_as_json(send, scope))

    async def _too_large(self, send, what: str) -> None:
        annotate(rejected="body_too_large")
        await _error(send, 413, f"request body too large ({what}); the limit is MAX_REQUEST_SIZE = "
                     f"{self.max_body} bytes", ["body"], "request_too_large")


async def read_body(receive, max_body: int | None = None) -> bytes | None:
    """The whole request body, or ``None`` if the client went away first; ``TooLarge`` past ``max_body`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect: the client went away
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if max_body is not None and size > max_body:
            raise TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay_body(body: bytes, receive):
    """A ``receive`` that gives ``body`` (already read) first, then whatever the client sends next."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _routing_errors_as_json(send, scope):
    """Rewrite the router's plain 404/405 answers (Starlette's text, FastAPI's ``{"detail": "..."}``) into the
    API's JSON error shape; every other answer, our own JSON 404 included, passes untouched."""
    held: dict[str, Any] = {}

    async def wrapped(message) -> None:
        if message["type"] == "http.response.start" and message["status"] in (404, 405):
            held.update(start=message, body=b"")
            return
        if "start" in held and message["type"] == "http.response.body":
            held["body"] += message.get("body", b"")
            if message.get("more_body", False):
                return
            start, body = held.pop("start"), held.pop("body")
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and parsed.get("error"):
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            status = start["status"]
            allow = [v for k, v in start.get("headers", []) if k.lower() == b"allow"]
            route = f"{scope.get('method')} {scope.get('path', '')[:200]}"
            if status == 405:
                methods = allow[0].decode("latin-1") if allow else "another method"
                message_text = f"method not allowed: {route}; use {methods}"
                loc, kind = ["method"], "method_not_allowed"
            else:
                message_text, loc, kind = f"no such route: {route}", ["path"], "not_found"
            await _error(send, status, message_text, loc, kind, extra_headers=[(b"allow", a) for a in allow])
            return
        await send(message)

    return wrapped


async def _error(send, status: int, message: str, loc: list, kind: str, extra_headers=()) -> None:
    body = {"error": message, "detail": [{"loc": loc, "msg": message, "type": kind}]}
    await send_json(send, status, body, extra_headers)
