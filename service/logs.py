"""Structured JSON-line logs and the per-request middleware of the API service.

Every answered request logs one line on the ``timbral.service`` logger, e.g.::

    {"ts": "...", "level": "INFO", "logger": "timbral.service", "msg": "request", "request_id": "5f0c…",
     "method": "POST", "endpoint": "/recommend", "status": 200, "latency_ms": 3.1, "cache": "hit",
     "strategy": "personalized"}

The request id is the caller's ``X-Request-ID`` (if it is a sane token) or a new one, and is sent back in the
``X-Request-ID`` response header. Handlers add fields with ``annotate(...)``. Secrets never reach a log line:
URLs are shown through ``settings.redact_url``.

The middleware also refuses request bodies that are not JSON (415 with a JSON error) on our POST endpoints —
BentoML would otherwise try to read a form or guess — and counts answers by endpoint and status.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from service.metrics import count_response

log = logging.getLogger("timbral.service")
REQUEST: ContextVar[dict[str, Any] | None] = ContextVar("timbral_request", default=None)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
QUIET_PATHS = {"/metrics", "/readyz", "/livez", "/healthz", "/ping"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = REQUEST.get()
        if ctx and "request_id" in ctx:
            entry["request_id"] = ctx["request_id"]
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stdout for the ``timbral`` loggers (idempotent)."""
    logger = logging.getLogger("timbral")
    logger.setLevel(level.upper())
    logger.propagate = False
    if not any(getattr(h, "_timbral", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter())
        handler._timbral = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


def annotate(**fields: Any) -> None:
    """Add fields to the current request's log line (no-op outside a request)."""
    ctx = REQUEST.get()
    if ctx is not None:
        ctx.update(fields)


def request_id() -> str | None:
    ctx = REQUEST.get()
    return None if ctx is None else ctx.get("request_id")


class RequestMiddleware:
    """ASGI middleware: request id, JSON-only bodies on ``json_paths``, one log line and one count per answer."""

    def __init__(self, app, json_paths: tuple[str, ...] = (), known_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.json_paths = set(json_paths)
        self.known_paths = set(known_paths) | self.json_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid = headers.get("x-request-id", "")
        rid = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        path = scope.get("path", "")
        endpoint = path if path in self.known_paths else "other"
        ctx: dict[str, Any] = {"request_id": rid}
        token = REQUEST.set(ctx)
        status = {"code": 500}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            if scope.get("method") == "POST" and path in self.json_paths:
                media = headers.get("content-type", "application/json").split(";")[0].strip().lower()
                if media != "application/json":
                    await send_json(send_wrapper, 415, {
                        "error": f"Content-Type must be application/json, got {media or 'none'!r}",
                        "detail": [{"loc": ["header", "Content-Type"], "msg": "must be application/json",
                                    "type": "unsupported_media_type"}]})
                    return
            await self.app(scope, receive, send_wrapper)
        finally:
            REQUEST.reset(token)
            latency = round((time.perf_counter() - started) * 1000, 2)
            if endpoint != "other":
                count_response(endpoint, status["code"])
            fields = {k: v for k, v in ctx.items() if k != "request_id"}
            level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
            if log.isEnabledFor(level):
                log.log(level, "request", extra={"request_id": rid, "method": scope.get("method"), "endpoint": path,
                                                 "status": status["code"], "latency_ms": latency, **fields})


async def send_json(send, status: int, body: dict, headers=()) -> None:
    """Answer with a JSON body (used by the middleware, which answer before the app sees the request)."""
    await send_json_bytes(send, status, json.dumps(body).encode("utf-8"), headers)


async def send_json_bytes(send, status: int, payload: bytes, headers=()) -> None:
    """Answer with ``payload``, already JSON-encoded, in one body with its length."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})
