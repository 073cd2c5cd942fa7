"""service.logs: JSON lines, request ids, the JSON-only guard of the request middleware (plain ASGI calls)."""

from __future__ import annotations

import asyncio
import json
import logging

from service.logs import REQUEST, JsonFormatter, RequestMiddleware, annotate


async def _app(scope, receive, send):
    annotate(cache="hit", strategy="popular")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


def call(middleware, method="POST", path="/recommend", headers=()):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": list(headers)}
    asyncio.run(middleware(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_json_formatter_includes_extra_fields_and_request_id():
    record = logging.LogRecord("timbral.service", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.latency_ms = 1.5
    token = REQUEST.set({"request_id": "abc"})
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        REQUEST.reset(token)
    assert line["msg"] == "hello you" and line["latency_ms"] == 1.5 and line["request_id"] == "abc"
    assert line["level"] == "INFO" and line["ts"].endswith("+00:00")


def test_request_id_is_kept_or_made_and_the_line_is_logged(caplog):
    mw = RequestMiddleware(_app, json_paths=("/recommend",))
    logger = logging.getLogger("timbral.service")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="timbral.service"):
            status, headers, _ = call(mw, headers=[(b"x-request-id", b"req-42"), (b"content-type", b"application/json")])
            _, other, _ = call(mw, headers=[(b"x-request-id", b"bad id with spaces")])
    finally:
        logger.removeHandler(caplog.handler)
    assert status == 200 and headers[b"x-request-id"] == b"req-42"
    assert len(other[b"x-request-id"]) == 32 and other[b"x-request-id"] != b"bad id with spaces"
    record = next(r for r in caplog.records if getattr(r, "request_id", None) == "req-42")
    assert (record.endpoint, record.status, record.cache, record.strategy) == ("/recommend", 200, "hit", "popular")


def test_non_json_bodies_get_415_with_a_json_error():
    mw = RequestMiddleware(_app, json_paths=("/recommend",))
    status, headers, body = call(mw, headers=[(b"content-type", b"text/plain")])
    assert status == 415 and headers[b"content-type"] == b"application/json"
    assert json.loads(body)["detail"][0]["loc"] == ["header", "Content-Type"]
    assert call(mw, headers=[(b"content-type", b"application/json; charset=utf-8")])[0] == 200
    assert call(mw, method="GET", path="/health", headers=[(b"content-type", b"text/plain")])[0] == 200
