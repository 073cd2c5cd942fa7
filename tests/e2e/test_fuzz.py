"""Fuzzing the served bento: schemathesis over its own OpenAPI document (``/docs.json``), then hostile bodies by hand.

Rules for every answer: never a 5xx; every 4xx is JSON that says what was wrong (``error`` or ``detail[].msg``).
The server runs with the rate limiter on (a limit that never trips) and the default 1 MiB body limit.
"""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest

pytestmark = pytest.mark.slow

POST_ROUTES = ("/recommend", "/recommend/batch", "/recommend/history", "/similar-items", "/score")
# generated cases per operation and generation mode; GET operations without parameters have one distinct case
EXAMPLES = 110


def problem_with(status: int, content_type: str, text: str) -> str | None:
    """Why an answer breaks the rules, or None."""
    if status >= 500:
        return f"{status}: {text[:300]}"
    if 400 <= status < 500:
        if not content_type.startswith("application/json"):
            return f"{status} with {content_type!r}: {text[:200]}"
        try:
            body = json.loads(text)
        except ValueError:
            return f"{status} with a body that is not JSON: {text[:200]}"
        if not isinstance(body, dict):
            return f"{status} with JSON that is not an object: {text[:200]}"
        detail = body.get("detail")
        says = (isinstance(body.get("error"), str) and body["error"].strip()) or (
            isinstance(detail, list) and detail and all(isinstance(d, dict) and d.get("msg") for d in detail))
        if not says:
            return f"{status} without an error message: {text[:200]}"
    return None


def check(resp: httpx.Response) -> str | None:
    return problem_with(resp.status_code, resp.headers.get("content-type", ""), resp.text)


# ---------------------------------------------------------------------------------------------- schemathesis
def _fuzz(op, mode, url: str, counts: Counter, failures: list[str]) -> None:
    """``EXAMPLES`` generated cases of one operation in one generation mode (reproducible: derandomized)."""
    from hypothesis import HealthCheck, Phase, given, settings

    label = f"{op.label} {mode.value}"

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def fuzz(case) -> None:
        counts[label] += 1
        response = case.call(base_url=url, timeout=30)
        ctype = response.headers.get("content-type") or [""]  # schemathesis: header name -> list of values
        problem = problem_with(response.status_code, ctype if isinstance(ctype, str) else ctype[0], response.text)
        if problem:
            failures.append(f"{label}: {problem}\n    sent: {str(case.body)[:300]}")

    fuzz()


def test_schemathesis_finds_no_5xx_and_only_explained_4xx(served):
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{served.url}/docs.json", timeout=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {f"POST {p}" for p in POST_ROUTES} | {"GET /model", "GET /health", "GET /ping"} <= labels, labels

    counts: Counter[str] = Counter()
    failures: list[str] = []
    for op in operations:
        post = op.method.upper() == "POST"
        for mode in [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if post else [GenerationMode.POSITIVE]:
            _fuzz(op, mode, served.url, counts, failures)

    total = sum(counts.values())
    print(f"\nschemathesis: {total} generated cases over {len(operations)} operations")
    for label, n in sorted(counts.items()):
        print(f"  {n:5d}  {label}")
    assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures[:20])
    assert total >= 1000, counts
    assert all(counts[f"POST {p} negative"] > 0 and counts[f"POST {p} positive"] > 0 for p in POST_ROUTES), counts


# ------------------------------------------------------------------------------------------------- by hand
def _ids(n: int, prefix: str = "x") -> bytes:
    return b",".join(f'"{prefix}{i}"'.encode() for i in range(n))


NESTED = b"[" * 100_000 + b"]" * 100_000
HAND_BODIES: list[tuple[str, bytes]] = [
    # huge k
    ("/recommend", b'{"user_id": "u1", "k": 100000000000000000000000000000000000000}'),
    ("/recommend", b'{"user_id": "u1", "k": 9223372036854775808}'),
    ("/recommend", b'{"user_id": "u1", "k": 501}'),
    ("/recommend", b'{"user_id": "u1", "k": 1e400}'),
    ("/recommend/batch", b'{"user_ids": ["u1"], "k": 18446744073709551616}'),
    ("/similar-items", b'{"item_id": "i1", "k": 100000000000000000000}'),
    ("/recommend/history", b'{"items": [{"item_id": "i1"}], "k": -100000000000000000000}'),
    # huge batches and lists
    ("/recommend/batch", b'{"user_ids": [' + _ids(100, "u") + b'], "k": 500}'),
    ("/recommend/batch", b'{"user_ids": [' + _ids(10_000, "u") + b'], "k": 5}'),
    ("/recommend/batch", b'{"user_ids": [' + b",".join([b'"' + b"u" * 256 + b'"'] * 100) + b'], "k": 500}'),
    ("/recommend", b'{"user_id": "u1", "k": 500, "exclude_items": [' + _ids(1000, "i") + b"]}"),
    ("/recommend", b'{"user_id": "u1", "include_items": [' + _ids(50_000) + b"]}"),
    ("/score", b'{"user_id": "u1", "item_ids": [' + _ids(1000, "i") + b"]}"),
    ("/score", b'{"user_id": "u1", "item_ids": [' + _ids(1001, "i") + b"]}"),
    ("/recommend/history", b'{"items": [' + b",".join([b'{"item_id": "i1", "value": 1e9}'] * 1000) + b'], "k": 500}'),
    ("/recommend/history", b'{"items": [' + b",".join([b'{"item_id": "i2"}'] * 1001) + b"]}"),
    # deeply nested and oversized JSON
    ("/recommend", NESTED),
    ("/recommend", b'{"user_id": ' + NESTED + b"}"),
    ("/recommend/batch", b'{"user_ids": ' + b"[" * 5000 + b'"u1"' + b"]" * 5000 + b"}"),
    ("/recommend", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    ("/recommend", b'{"user_id": "u1", "pad": "' + b"x" * 1_040_000 + b'"}'),
    ("/score", b'{"user_id": "u1", "item_ids": [' + b",".join([b"1"] * 500_000) + b"]}"),
    # unicode and very long ids
    ("/recommend", '{"user_id": "é\\u0000🎵\u202e\u200b"}'.encode()),
    ("/recommend", b'{"user_id": "\\ud800"}'),
    ("/recommend", b'{"user_id": "\\udfff\\ud800 lone surrogates"}'),
    ("/recommend", b'{"user_id": "' + "🎵".encode() * 256 + b'"}'),
    ("/recommend", b'{"user_id": "' + b"x" * 257 + b'"}'),
    ("/recommend", b'{"user_id": "' + b"x" * 900_000 + b'"}'),
    ("/similar-items", b'{"item_id": "' + "ü".encode() * 256 + b'"}'),
    ("/score", b'{"user_id": 10000000000000000000000000000000000000000, "item_ids": [-1, 99999999999999999999]}'),
    ("/recommend", b'{"user_id": -9223372036854775809}'),
    ("/recommend", b'\xef\xbb\xbf{"user_id": "u1"}'),
    ("/recommend", b'{"user_id": "\xff\xfe invalid utf-8"}'),
    # NaN / Infinity as raw tokens (Python's json accepts them; they are not JSON)
    ("/recommend", b'{"user_id": "u1", "k": NaN}'),
    ("/recommend", b'{"user_id": NaN}'),
    ("/recommend", b'{"user_id": Infinity}'),
    ("/recommend/history", b'{"items": [{"item_id": "i1", "value": NaN}]}'),
    ("/recommend/history", b'{"items": [{"item_id": "i1", "value": Infinity}]}'),
    ("/recommend/history", b'{"items": [{"item_id": "i1", "value": -Infinity}]}'),
    ("/score", b'{"user_id": "u1", "item_ids": [NaN, Infinity]}'),
    ("/similar-items", b'{"item_id": "i1", "k": Infinity}'),
    # ids of both kinds mixed, out-of-range integers
    ("/recommend", b'{"user_id": "u1", "exclude_items": [1, "i1", -5, 99999999999999999999999]}'),
    ("/recommend", b'{"user_id": 1, "include_items": [1, "i2", 0, -1]}'),
    ("/score", b'{"user_id": -1, "item_ids": [1, "i1", -3, 99999999999999999999999]}'),
    ("/recommend/batch", b'{"user_ids": [1, "u1", -1, 99999999999999999999999, "1"]}'),
    ("/recommend/history", b'{"items": [{"item_id": 1}, {"item_id": "i1"}, {"item_id": 99999999999999999999999}]}'),
    ("/recommend/history", b'{"items": [{"item_id": "i1", "value": 1e-320}, {"item_id": "i2", "value": 0}]}'),
    ("/similar-items", b'{"item_id": 99999999999999999999999}'),
    # odd JSON
    ("/recommend", b'{"user_id": "u1"} trailing'),
    ("/recommend", b'{"user_id": "u1", "user_id": "u2"}'),
    ("/recommend", b'{"user_id": "u1", "k": 3.0}'),
    ("/recommend", b'{"user_id": "u1", "exclude_items": [{}]}'),
    ("/recommend/history", b'{"items": [null, 1, "i1"]}'),
    ("/recommend/history", b'{"items": {"item_id": "i1"}}'),
]


@pytest.mark.parametrize("path", POST_ROUTES)
def test_hand_made_hostile_bodies(served, path):
    bad = []
    with httpx.Client(base_url=served.url, timeout=60) as client:
        for route, body in HAND_BODIES:
            for target in {route, path}:  # each body at its own route, and every body at every route
                resp = client.post(target, content=body, headers={"content-type": "application/json"})
                if problem := check(resp):
                    bad.append(f"{target} {body[:80]!r}... ({len(body)} bytes): {problem}")
    assert not bad, "\n".join(bad)


CONTENT_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
                 "application/xml", "application/octet-stream", "application/json-patch+json", "image/png",
                 "application/json; charset=latin-1", "APPLICATION/JSON", "", "*/*", "application/",
                 "application/json, text/plain"]


@pytest.mark.parametrize("path", POST_ROUTES)
def test_wrong_content_types(served, path):
    bad = []
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for ctype in CONTENT_TYPES:
            resp = client.post(path, content=b'{"user_id": "u1"}', headers={"content-type": ctype})
            if problem := check(resp):
                bad.append(f"{ctype!r}: {problem}")
        resp = client.post(path, files={"file": ("a.json", b'{"user_id": "u1"}', "application/json")})
        if problem := check(resp):
            bad.append(f"multipart upload: {problem}")
    assert not bad, "\n".join(bad)


def test_wrong_methods_and_unknown_paths(served):
    bad = []
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for path in POST_ROUTES:
            for method in ("GET", "PUT", "DELETE", "PATCH"):
                if problem := check(client.request(method, path, content=b'{"user_id": "u1"}')):
                    bad.append(f"{method} {path}: {problem}")
        for method, path in [("POST", "/model"), ("POST", "/health"), ("GET", "/nope"), ("POST", "/recommend/"),
                             ("GET", "/recommend/batch/x"), ("POST", "/" + "a" * 5000)]:
            if problem := check(client.request(method, path, json={"user_id": "u1"})):
                bad.append(f"{method} {path[:40]}: {problem}")
    assert not bad, "\n".join(bad)


def test_oversized_bodies_get_413_before_parsing(served):
    limit = 1_048_576
    body = b'{"user_id": "u1", "pad": "' + b"x" * limit + b'"}'
    resp = httpx.post(f"{served.url}/recommend", content=body, headers={"content-type": "application/json"},
                      timeout=30)
    assert resp.status_code == 413 and resp.json()["detail"][0]["type"] == "request_too_large", resp.text
    assert "MAX_REQUEST_SIZE" in resp.json()["error"]

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(24):
            yield b"x" * 65_536

    resp = httpx.post(f"{served.url}/recommend", content=chunks(), headers={"content-type": "application/json"},
                      timeout=30)
    assert resp.status_code == 413 and resp.json()["detail"][0]["loc"] == ["body"], resp.text

    def small():
        yield b'{"user_id": '
        yield b'"u1", "k": 2}'

    resp = httpx.post(f"{served.url}/recommend", content=small(), headers={"content-type": "application/json"},
                      timeout=30)
    assert resp.status_code == 200 and len(resp.json()["items"]) == 2, resp.text
    # just under the limit: parsed (and refused for its own reasons)
    body = b'{"user_id": "u1", "pad": "' + b"x" * (limit - 100) + b'"}'
    resp = httpx.post(f"{served.url}/recommend", content=body, headers={"content-type": "application/json"},
                      timeout=30)
    assert resp.status_code == 400 and check(resp) is None, resp.text
    health = httpx.get(f"{served.url}/health", timeout=10).json()
    assert health["status"] == "ok", health
