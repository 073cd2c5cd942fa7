"""service.direct_answers in-process, in front of the real ``Timbral`` service instance on a small stored model.

The lane must give the bytes BentoML's route gives for a valid body (the response model's JSON, from the same
``Answerer.respond``), leave every other request to the app behind it untouched, and answer failures as
BentoML's API layer does.
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from service.answers import ENDPOINTS, Answerer
from service.direct_answers import UNEXPECTED, DirectAnswers
from service.guard import read_body
from service.model_client import ModelClient, ModelHTTP
from training.local_stack import free_port


class Behind:
    """The app behind the lane (BentoML's routes in production): records what reaches it, answers 299."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        self.bodies.append(await read_body(receive))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def acall(app, path: str, body: bytes, method: str = "POST") -> tuple[int, bytes, dict]:
    sent = []
    queue = [{"type": "http.request", "body": body[:5], "more_body": True},
             {"type": "http.request", "body": body[5:], "more_body": False}]

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app({"type": "http", "method": method, "path": path, "headers": []}, receive, send)
    headers = {k.decode(): v.decode() for k, v in sent[0].get("headers", [])}
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), headers


def call(app, path: str, body: bytes, method: str = "POST") -> tuple[int, bytes, dict]:
    return asyncio.run(acall(app, path, body, method))


async def calls_then_close(app, client: ModelClient, *requests: tuple[str, bytes]) -> list[tuple[int, bytes, dict]]:
    try:
        return [await acall(app, path, body) for path, body in requests]
    finally:
        await client.close()


def lane(answerer):
    behind = Behind()
    return behind, DirectAnswers(behind, lambda: answerer)


VALID = {
    "/recommend": {"user_id": "u2", "k": 5, "exclude_items": ["i1", "nope"]},
    "/recommend/batch": {"user_ids": ["u1", "nobody", "u3"], "k": 3},
    "/recommend/history": {"items": [{"item_id": "i3", "value": 2.0}, {"item_id": "zz", "value": 1.0}], "k": 4},
    "/similar-items": {"item_id": "i3", "k": 3},
    "/score": {"user_id": "u1", "item_ids": ["i1", "none"]},
}


def test_every_endpoint_is_in_the_table_and_answered_with_the_bentoml_methods_bytes(stack):
    api, _, _ = stack
    assert set(VALID) == set(ENDPOINTS)
    methods = {"/recommend": api.recommend, "/recommend/batch": api.recommend_batch,
               "/recommend/history": api.recommend_history, "/similar-items": api.similar_items, "/score": api.score}
    behind, app = lane(api.answers)
    for path, fields in VALID.items():
        status, body, headers = call(app, path, json.dumps(fields).encode())
        expected = asyncio.run(methods[path](**fields)).model_dump_json().encode()
        assert (status, body) == (200, expected), path
        assert headers == {"content-type": "application/json", "content-length": str(len(body))}
    assert behind.bodies == []  # none of them reached BentoML's routes


def test_an_unknown_item_is_the_endpoints_own_404(stack):
    api, _, _ = stack
    behind, app = lane(api.answers)
    status, body, _ = call(app, "/similar-items", b'{"item_id": "nope", "k": 3}')
    via_bentoml = asyncio.run(api.similar_items(item_id="nope", k=3))
    assert status == via_bentoml.status_code == 404
    assert json.loads(body) == json.loads(via_bentoml.body) and json.loads(body)["detail"][0]["loc"] == ["item_id"]
    assert behind.bodies == []


@pytest.mark.parametrize("body", [
    b'{"user_id": "u1", "k": 0}',  # k out of range
    b'{"k": 5}',  # user_id missing
    b'{"user_id": "u1", "colour": "red"}',  # unknown field
    b'{"user_id": "u1", "exclude_seen": "yes"}',  # not a boolean
    b'{"user_id": null}',  # null id
    b'{"user_id": "u1",',  # not JSON
    b'',  # empty body
])
def test_a_body_that_does_not_validate_goes_to_bentoml_unchanged(stack, body):
    api, _, _ = stack
    behind, app = lane(api.answers)
    status, _, _ = call(app, "/recommend", body)
    assert status == 299 and behind.bodies == [body]


def test_other_paths_methods_and_a_service_not_yet_started_are_left_alone(stack):
    api, _, _ = stack
    behind, app = lane(api.answers)
    assert call(app, "/model", b"")[0] == 299
    assert call(app, "/recommend", b'{"user_id": "u1"}', method="GET")[0] == 299
    assert call(app, "/recommend/", b'{"user_id": "u1"}')[0] == 299
    not_started = DirectAnswers(behind, lambda: None)
    assert call(not_started, "/recommend", b'{"user_id": "u1"}')[0] == 299
    assert behind.bodies == [b"", b'{"user_id": "u1"}', b'{"user_id": "u1"}', b'{"user_id": "u1"}']


def test_a_model_service_that_is_unreachable_is_bentomls_503(stack):
    api, _, _ = stack
    unreachable = ModelClient(lambda: ModelHTTP(f"http://127.0.0.1:{free_port()}"))  # nothing listens there
    _, app = lane(Answerer(api.catalog, unreachable, api.cache))
    (status, body, _), stranger = asyncio.run(calls_then_close(
        app, unreachable, ("/recommend", b'{"user_id": "u1", "k": 3}'), ("/recommend", b'{"user_id": "stranger"}')))
    assert (status, json.loads(body)) == (503, UNEXPECTED)
    assert stranger[0] == 200  # an unknown user never needs the model: still answered


class NotJSON(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers["Content-Length"]))
        payload = b"<html>not json</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


def test_an_unexpected_failure_is_a_500_with_bentomls_message(stack):
    api, _, _ = stack
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotJSON)  # a "model service" that answers HTML
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        broken = ModelClient(lambda: ModelHTTP(f"http://127.0.0.1:{server.server_address[1]}"))
        _, app = lane(Answerer(api.catalog, broken, api.cache))
        [(status, body, _)] = asyncio.run(calls_then_close(app, broken, ("/similar-items", b'{"item_id": "i3", "k": 3}')))
        assert (status, json.loads(body)) == (500, UNEXPECTED)
    finally:
        server.shutdown()
        server.server_close()
