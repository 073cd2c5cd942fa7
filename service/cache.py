"""Read-through cache of endpoint answers in Redis that never stands between a request and its answer.

* Keys: ``timbral:<model namespace>:<endpoint>:<sha256 of the request as sorted-keys JSON>`` — the namespace is
  the served model's store tag, so a new model never reads an old model's answers.
* Every Redis call is bounded by ``REDIS_TIMEOUT_MS`` (socket timeouts and an asyncio deadline; redis-py's own
  retries are off). A failure marks Redis *down* and starts a back-off (1 s, doubling to 5 s) during which Redis
  is not tried at all; after it one request probes, and the cache resumes by itself when Redis answers.
* Errors are counted and logged once per outage, never raised: the caller simply computes the answer.

The connection, timeout and back-off live in ``RedisLink``, which the cache extends and the rate limiter
(``service.guard``) uses too — through the cache itself when caching is on, so both share one pool and one
outage state.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from service.metrics import count_cache
from service.settings import Settings, redact_url

log = logging.getLogger("timbral.service")

UP, DOWN, DISABLED = "up", "down", "disabled"
MAX_CONNECTIONS = 1024  # per pool (redis-py's asyncio default of 100 fails calls outright in a burst)


def request_digest(request: Any) -> str:
    blob = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class RedisLink:
    """One Redis connection pool whose calls never raise and never take longer than ``timeout_ms``.

    ``await link.call(op)`` runs ``op(client)`` (an awaitable redis-py call) and returns its result, or ``None``
    when Redis failed, timed out or is in back-off. ``state`` is ``up`` or ``down``; ``last_error`` says why
    (password redacted).
    """

    def __init__(self, url: str, *, timeout_ms: int = 50, backoff_min: float = 1.0, backoff_max: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.timeout = timeout_ms / 1000.0
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self._clock = clock
        self._client = None
        self._backoff = backoff_min
        self._retry_at = 0.0  # monotonic time before which Redis is not tried
        self._probing = False
        self.state = UP
        self.last_error: str | None = None

    @property
    def url_redacted(self) -> str:
        return redact_url(self.url)

    async def call(self, op):
        return await self._call(op)

    async def ping(self) -> str:
        """``up``/``down`` (pings Redis unless it is in back-off)."""
        await self._call(lambda client: client.ping())
        return self.state

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.aclose(), timeout=max(self.timeout, 0.5))
            except Exception:  # noqa: BLE001 - closing a dead connection may fail; nothing to do
                pass

    # -------------------------------------------------------------------------------------- internals
    def _make_client(self):
        import redis.asyncio as aioredis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return aioredis.Redis.from_url(
            self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0,
            single_connection_client=False, max_connections=MAX_CONNECTIONS,
        )

    def _may_try(self) -> bool:
        if self.state == UP:
            return True
        if self._probing or self._clock() < self._retry_at:
            return False
        self._probing = True  # this caller probes; the others keep skipping until it is done
        return True

    async def _call(self, op):
        if not self._may_try():
            return None
        probing = self._probing
        loop = asyncio.get_running_loop()
        started = loop.time()
        client = None
        try:
            if self._client is None:
                self._client = self._make_client()
            client = self._client
            async with asyncio.timeout(self.timeout):
                result = await op(client)
        except Exception as exc:  # noqa: BLE001 - any Redis, socket, timeout or protocol error
            if not self._our_fault(exc, loop.time() - started, client):
                self._failed(exc)
            return None
        finally:
            if probing:
                self._probing = False
        if client is not self._client:  # answered on a pool dropped meanwhile: the state is the probe's to set
            return result
        if self.state != UP:
            log.info("redis is back at %s; caching and rate limiting resume", self.url_redacted)
        self.state, self._backoff, self.last_error = UP, self.backoff_min, None
        return result

    def _our_fault(self, exc: BaseException, elapsed: float, client) -> bool:
        """True when a failure says nothing about Redis, so it must not start an outage (this call just goes
        without Redis):

        * the call ran on a pool already replaced after an earlier failure (closing it fails its calls);
        * a timeout that fired more than one whole budget late: this process's event loop was busy (CPU
          overload), not Redis — treating that as an outage would switch the cache off exactly under load;
        * every pooled connection is in use (a burst): a local limit, not a Redis failure.
        """
        from redis.exceptions import TimeoutError as RedisTimeout

        if client is not None and client is not self._client:
            return True
        if isinstance(exc, (TimeoutError, RedisTimeout)) and elapsed > 2 * self.timeout:
            log.debug("redis call timed out %.0f ms late: event loop busy, not counted as an outage",
                      (elapsed - self.timeout) * 1000)
            return True
        return type(exc).__name__ == "MaxConnectionsError"

    def _failed(self, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}".replace(self.url, self.url_redacted)
        if self.state == UP:
            log.warning("redis at %s failed (%s); answering without the cache and without rate limits, "
                        "retry in %.1fs", self.url_redacted, message, self._backoff)
        self.state, self.last_error = DOWN, message
        # start the next probe from a fresh connection pool: connections of the old one may be half-broken
        stale, self._client = self._client, None
        if stale is not None:
            task = asyncio.get_running_loop().create_task(_close_quietly(stale))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)
        self._retry_at = self._clock() + self._backoff
        self._backoff = min(self.backoff_max, self._backoff * 2)


class ResponseCache(RedisLink):
    def __init__(self, url: str, *, ttl: int = 300, timeout_ms: int = 50, enabled: bool = True,
                 backoff_min: float = 1.0, backoff_max: float = 5.0, prefix: str = "timbral",
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(url, timeout_ms=timeout_ms, backoff_min=backoff_min, backoff_max=backoff_max, clock=clock)
        self.ttl, self.enabled, self.prefix = int(ttl), bool(enabled), prefix
        self.state = UP if self.enabled else DISABLED

    @classmethod
    def from_settings(cls, settings: Settings) -> ResponseCache:
        return cls(settings.redis_url, ttl=settings.cache_ttl, timeout_ms=settings.redis_timeout_ms,
                   enabled=settings.enable_caching)

    def key(self, namespace: str, endpoint: str, request: Any) -> str:
        return f"{self.prefix}:{namespace}:{endpoint}:{request_digest(request)}"

    def body_key(self, namespace: str, path: str, body: bytes) -> str:
        """The key of a raw request body's stored answer (``service.cache_front``)."""
        return f"{self.prefix}:{namespace}:body:{path}:{hashlib.sha256(body).hexdigest()}"

    # -------------------------------------------------------------------------------------- public API
    async def get(self, key: str, endpoint: str = "") -> dict | None:
        return (await self.get_many([key], endpoint))[0]

    async def get_many(self, keys: Sequence[str], endpoint: str = "") -> list[dict | None]:
        if not keys:
            return []
        raw = await self._call(lambda client: client.mget(list(keys)))
        if raw is None:
            count_cache(endpoint, "error" if self.enabled else "disabled", len(keys))
            return [None] * len(keys)
        out: list[dict | None] = []
        for value in raw:
            try:
                out.append(None if value is None else json.loads(value))
            except ValueError:
                out.append(None)
        hits = sum(v is not None for v in out)
        count_cache(endpoint, "hit", hits)
        count_cache(endpoint, "miss", len(out) - hits)
        return out

    async def set(self, key: str, value: dict) -> bool:
        return await self.set_many([(key, value)])

    async def set_many(self, items: Sequence[tuple[str, dict]]) -> bool:
        if not items:
            return True

        async def write(client):
            pipe = client.pipeline(transaction=False)
            for key, value in items:
                pipe.set(key, json.dumps(value, separators=(",", ":")), ex=self.ttl)
            return await pipe.execute()

        return await self._call(write) is not None

    async def status(self) -> str:
        """``up``/``down``/``disabled``: pings Redis unless it is disabled or in back-off."""
        if not self.enabled:
            return DISABLED
        return await self.ping()

    def _may_try(self) -> bool:
        return self.enabled and super()._may_try()


_BACKGROUND: set[asyncio.Task] = set()


async def _close_quietly(client) -> None:
    try:
        await asyncio.wait_for(client.aclose(), timeout=1.0)
    except (Exception, asyncio.CancelledError):  # noqa: BLE001 - best effort on a client we no longer use
        pass
