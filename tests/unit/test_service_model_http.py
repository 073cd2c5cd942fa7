"""``service.model_client.ModelHTTP``, the API's JSON client of the model service, against a real HTTP server on
a unix socket (the address ``bentoml serve`` hands out) and on TCP; and the tracing switch of both services."""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from service.model_client import ModelClient, ModelHTTP


class Recorder:
    """An aiohttp app answering like the model service; it records what each request carried."""

    def __init__(self, fail_first: int | None = None, status: int = 503) -> None:
        self.seen: list[dict] = []
        self.fail_first, self.status = fail_first, status

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append({"path": request.path, "content_type": request.content_type,
                          "length": request.content_length, "chunked": "chunked" in request.headers.get(
                              "Transfer-Encoding", ""), "json": json.loads(body)})
        if self.fail_first is not None and len(self.seen) <= self.fail_first:
            return web.Response(status=self.status, text="process is overloaded")
        rows = self.seen[-1]["json"].get("rows", [])
        return web.json_response([[[r[0], 0.5]] for r in rows])


async def serve(recorder: Recorder, tmp: Path, unix: bool = True) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/{method}", recorder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    if unix:
        path = tmp / "model.sock"
        await web.UnixSite(runner, str(path)).start()
        return runner, path.as_uri()  # file:///…/model.sock, what BentoML's remote_runner_mapping holds
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"tcp://127.0.0.1:{port}"


@pytest.mark.parametrize("unix", [True, False], ids=["unix-socket", "tcp"])
def test_a_call_posts_one_json_body_with_a_length_and_returns_the_decoded_answer(unix):
    async def scenario():
        recorder = Recorder()
        with tempfile.TemporaryDirectory() as tmp:
            runner, url = await serve(recorder, Path(tmp), unix)
            client = ModelHTTP(url)
            try:
                rows = np.array([[3, 10, 1], [7, 5, 0]], dtype=np.int64)
                answer = await client.call("recommend", rows=rows)
                again = await client.call("fold_in", item_indices=[np.int64(4)], values=[np.float32(2.0)], n=3)
            finally:
                await client.close()
                await runner.cleanup()
        return recorder.seen, answer, again

    seen, answer, again = asyncio.run(scenario())
    assert answer == [[[3, 0.5]], [[7, 0.5]]]
    assert again == []
    assert [s["path"] for s in seen] == ["/recommend", "/fold_in"]
    assert all(s["content_type"] == "application/json" and s["length"] and not s["chunked"] for s in seen)
    assert seen[0]["json"] == {"rows": [[3, 10, 1], [7, 5, 0]]}
    assert seen[1]["json"] == {"item_indices": [4], "values": [2.0], "n": 3}


@pytest.mark.parametrize(("status", "error"), [(503, "ServiceUnavailable"), (400, "InvalidArgument"),
                                               (404, "NotFound"), (500, "BentoMLException")])
def test_an_error_status_raises_bentomls_exception_for_it_with_the_body(status, error):
    async def scenario():
        recorder = Recorder(fail_first=1, status=status)
        with tempfile.TemporaryDirectory() as tmp:
            runner, url = await serve(recorder, Path(tmp))
            client = ModelHTTP(url)
            try:
                with pytest.raises(Exception) as info:
                    await client.call("recommend", rows=[[1, 2, 1]])
            finally:
                await client.close()
                await runner.cleanup()
        return info.value

    exc = asyncio.run(scenario())
    assert type(exc).__name__ == error and int(exc.error_code) == status
    assert "process is overloaded" in str(exc)


def test_model_client_retries_a_503_once_through_the_http_client_then_gives_up():
    async def scenario(fail_first: int):
        recorder = Recorder(fail_first=fail_first)
        with tempfile.TemporaryDirectory() as tmp:
            runner, url = await serve(recorder, Path(tmp))
            http = ModelHTTP(url)
            client = ModelClient(lambda: http, retries=1)
            try:
                return await client.rows("recommend", np.array([[9, 1, 1]])), len(recorder.seen)
            except Exception as exc:  # noqa: BLE001
                return type(exc).__name__, len(recorder.seen)
            finally:
                await client.close()
                await runner.cleanup()

    assert asyncio.run(scenario(1)) == ([[[9, 0.5]]], 2)
    assert asyncio.run(scenario(2)) == ("ServiceUnavailable", 2)


def test_an_unreachable_model_service_is_a_503_after_the_retry():
    async def scenario():
        with tempfile.TemporaryDirectory() as tmp:
            http = ModelHTTP((Path(tmp) / "nobody.sock").as_uri())
            client = ModelClient(lambda: http, retries=1)
            try:
                await client.call("recommend", rows=[[1, 1, 1]])
            except Exception as exc:  # noqa: BLE001
                return type(exc).__name__, str(exc)
            finally:
                await client.close()

    name, message = asyncio.run(scenario())
    assert name == "ServiceUnavailable" and "unreachable" in message


def test_a_value_json_cannot_carry_is_refused_before_sending():
    async def scenario():
        client = ModelHTTP("tcp://127.0.0.1:9")
        try:
            await client.call("recommend", rows={1, 2})
        finally:
            await client.close()

    with pytest.raises(TypeError, match="not JSON serialisable: set"):
        asyncio.run(scenario())


def test_tracing_is_off_by_default_in_both_services_and_bentomls_own_config_applies_when_on(monkeypatch):
    monkeypatch.delenv("TRACING_ENABLED", raising=False)
    from service.model_service import TimbralModel
    from service.service import Timbral
    from service.settings import Settings

    for service in (Timbral, TimbralModel):  # imported with the default settings
        assert service.config["tracing"]["excluded_urls"] == [".*"], service.name
    monkeypatch.delenv("TRACING_ENABLED", raising=False)
    assert Settings(_env_file=None).bentoml_tracing() == {"tracing": {"excluded_urls": [".*"]}}
    monkeypatch.setenv("TRACING_ENABLED", "true")
    assert Settings(_env_file=None).bentoml_tracing() == {}
