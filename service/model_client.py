"""How the API service talks to the model service: plain JSON, one retry, concurrent row calls coalesced.

Four things happen here, each for a reason measured in ``loadtest/results``:

* **JSON, not pickle.** ``bentoml.depends`` talks to a dependency in BentoML's pickle format, so the model
  process would unpickle whatever reaches its socket. :func:`model_proxy` builds a :class:`ModelHTTP` client
  speaking ``application/json`` instead (the model service's inputs and outputs are small integer rows and
  ``m × 2`` float arrays), and the model service refuses pickled bodies
  (``service.model_service.RefusePickle``). Nothing on the serving path unpickles anything.
* **Coalescing.** Every HTTP call into the model process costs ~2 ms of framework CPU there, whatever its size,
  while scoring a user costs 0.1–0.7 ms. :class:`Coalescer` sends concurrent ``recommend``/``similar`` rows as
  one call: when fewer than ``in_flight`` calls are outstanding a row leaves at once (no waiting window, so a
  lone request is not delayed); otherwise it queues and leaves with the rows that queued beside it. The model
  service's adaptive batching still merges the calls of several API workers or replicas.
* **Holding the slot under load.** The model service scores one batch at a time, and BentoML's dispatcher does
  not merge two API workers' calls: while this worker's answer travels back, the other worker's call is being
  scored, so a call sent at once would only queue behind it. After a call that carried the rows of several
  requests (the sign of load), the slot is kept for ``hold`` × that call's duration (at most ``MAX_HOLD_S``)
  and the next call leaves with the rows that arrived meanwhile. A call of one request is never followed by a
  hold, however many rows it carried: a lone client, even one sending /recommend/batch, is never slowed.
* **One retry** after a 503 or a dropped connection (see :class:`ModelClient`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from timbral.artifact import json_default

Rows = np.ndarray  # b × w int64: one row per question, e.g. [user index, n, exclude_seen]


class Coalescer:
    """``await submit(rows)`` → one answer per row; rows submitted while calls are in flight share one call.

    ``call(rows)`` must return one answer per row, in order. A caller's rows are never split; a call carries at
    most ``max_rows`` rows unless a single caller brings more. A failed call fails every caller in it. After a
    call that carried several callers' rows the slot stays taken for ``hold`` × its duration, capped at
    ``MAX_HOLD_S``.
    """

    MAX_HOLD_S = 0.02

    def __init__(self, call: Callable[[Rows], Awaitable[list[Any]]], max_rows: int = 64, in_flight: int = 1,
                 hold: float = 0.0) -> None:
        if max_rows < 1 or in_flight < 1:
            raise ValueError("max_rows and in_flight must be at least 1")
        if not 0.0 <= hold <= 1.0:
            raise ValueError(f"hold must be within 0..1, got {hold}")
        self._call, self.max_rows, self.in_flight, self.hold = call, max_rows, in_flight, hold
        self._pending: list[tuple[Rows, asyncio.Future]] = []
        self._tasks: set[asyncio.Task] = set()  # the event loop keeps only weak references to tasks
        self._running = 0
        self.calls = 0  # model calls made (for tests and the benchmark's reading)
        self.holds = 0  # calls after which the slot was held

    async def submit(self, rows: Rows) -> list[Any]:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 2 or rows.shape[0] == 0:
            raise ValueError(f"rows must be a non-empty 2-D array, got shape {rows.shape}")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((rows, future))
        self._launch()
        return await future

    def _launch(self) -> None:
        while self._pending and self._running < self.in_flight:
            take, n = [], 0
            while self._pending and (not take or n + len(self._pending[0][0]) <= self.max_rows):
                rows, future = self._pending.pop(0)
                if future.done():  # its caller went away while it queued
                    continue
                take.append((rows, future))
                n += len(rows)
            if take:
                self._running += 1
                task = asyncio.get_running_loop().create_task(self._run(take))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, take: list[tuple[Rows, asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        started, hold_s = loop.time(), 0.0
        try:
            rows = take[0][0] if len(take) == 1 else np.concatenate([r for r, _ in take])
            self.calls += 1
            try:
                answers = await self._call(rows)
                if len(answers) != len(rows):
                    raise RuntimeError(f"the model answered {len(answers)} rows for {len(rows)}")
            except BaseException as exc:  # noqa: BLE001 - every caller of the call gets the failure
                for _, future in take:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
                if not isinstance(exc, Exception):
                    raise
                return
            at = 0
            for r, future in take:
                if not future.done():
                    future.set_result(list(answers[at:at + len(r)]))
                at += len(r)
            if self.hold > 0 and len(take) > 1:
                hold_s = min(self.hold * (loop.time() - started), self.MAX_HOLD_S)
        finally:
            if hold_s > 0:
                self.holds += 1
                loop.call_later(hold_s, self._release)
            else:
                self._release()

    def _release(self) -> None:
        self._running -= 1
        self._launch()


class ModelClient:
    """Calls the model service: a :class:`ModelHTTP` client when served, the service instance when in-process.

    One retry after a 503 ("process is overloaded" from the adaptive batcher), which a burst can trigger, or after
    a dropped connection (a model worker died, or closed a kept-alive connection as we wrote to it): model calls
    are reads, so repeating one is safe, and a new connection waits for the respawned worker. A model service
    still unreachable after that is a 503 (not a 500), which a load balancer retries on another replica.

    ``rows(method, rows)`` goes through a :class:`Coalescer` per method; ``call`` is one call as it is.
    """

    def __init__(self, get_model: Callable[[], Any], retries: int = 1, max_rows: int = 64, in_flight: int = 1,
                 hold: float = 0.0) -> None:
        self._get_model, self.retries = get_model, retries
        self.max_rows, self.in_flight, self.hold = max_rows, in_flight, hold
        self._model: Any = None
        self.coalescers: dict[str, Coalescer] = {}

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self._get_model()
        return self._model

    async def call(self, method: str, **kwargs: Any) -> Any:
        from aiohttp import ClientConnectionError
        from bentoml.exceptions import ServiceUnavailable

        for attempt in range(self.retries + 1):
            try:
                client = self.model.to_async
                fn = getattr(client, method, None)  # the service instance's API method, in-process
                return await (fn(**kwargs) if fn is not None else client.call(method, **kwargs))
            except (ServiceUnavailable, ClientConnectionError) as exc:
                if attempt == self.retries:
                    if isinstance(exc, ClientConnectionError):
                        raise ServiceUnavailable(f"model service unreachable: {type(exc).__name__}") from exc
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    async def rows(self, method: str, rows: Rows) -> list[np.ndarray]:
        """A batchable method's answers for ``rows``, sharing a call with concurrent callers (``max_rows`` > 1)."""
        if self.max_rows <= 1:  # batching off: every caller its own call, at once
            return list(await self.call(method, rows=rows))
        coalescer = self.coalescers.get(method)
        if coalescer is None:
            async def call(batch: Rows, method: str = method) -> list[Any]:
                from service.metrics import observe_model_call

                observe_model_call(method, len(batch))
                return await self.call(method, rows=batch)

            coalescer = self.coalescers[method] = Coalescer(call, self.max_rows, self.in_flight, self.hold)
        return await coalescer.submit(rows)

    async def close(self) -> None:
        close = getattr(self._model, "close", None)
        if close is not None and asyncio.iscoroutinefunction(close):
            await close()


class ModelHTTP:
    """A JSON client of the model service's HTTP APIs, at the address ``bentoml serve`` gave it.

    BentoML's own client (``RemoteProxy``) cost the API process a tenth of its CPU per request here: it streams
    every body chunked and rebuilds each answer type's JSON schema to decode it (``loadtest/README.md``). The
    model APIs take and give plain JSON, so this client sends one ``Content-Length`` body on kept-alive
    connections and returns the decoded JSON (``m × 2`` answers as nested lists, which ``service.answers`` reads
    as arrays). Errors map to BentoML's exceptions by status, as BentoML's client does: 503 is
    ``ServiceUnavailable``, which :class:`ModelClient` retries.
    """

    def __init__(self, url: str, timeout_s: float = 60.0, propagate_traces: bool = False) -> None:
        from urllib.parse import urlsplit
        from urllib.request import url2pathname

        parts = urlsplit(url)
        self.socket_path = url2pathname(parts.path) if parts.scheme in ("file", "unix") else None
        self.base = ("http://model" if self.socket_path else
                     f"http://{parts.netloc}" if parts.scheme == "tcp" else url.rstrip("/"))
        self.timeout_s, self.propagate_traces = timeout_s, propagate_traces
        self._session: Any = None

    @property
    def to_async(self) -> ModelHTTP:  # ModelClient calls ``model.to_async.call(method, **kwargs)``
        return self

    def _open(self) -> Any:
        import aiohttp

        connector = aiohttp.UnixConnector(path=self.socket_path) if self.socket_path else aiohttp.TCPConnector()
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    async def call(self, method: str, **kwargs: Any) -> Any:
        session = self._session or self._open()
        headers = {"Content-Type": "application/json"}
        if self.propagate_traces:
            from opentelemetry import propagate

            propagate.inject(headers)
        body = json.dumps(kwargs, default=json_default).encode()
        async with session.post(f"{self.base}/{method}", data=body, headers=headers) as resp:
            data = await resp.read()
            status = resp.status
        if status >= 400:
            raise _model_error(status, data)
        return json.loads(data)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _model_error(status: int, body: bytes) -> Exception:
    from http import HTTPStatus

    from bentoml.exceptions import BentoMLException

    try:
        code = HTTPStatus(status)
    except ValueError:
        code = HTTPStatus.INTERNAL_SERVER_ERROR
    cls = BentoMLException.error_mapping.get(code, BentoMLException)
    return cls(body.decode("utf-8", "replace")[:500], error_code=code)


def model_proxy(service: Any) -> ModelHTTP | None:
    """A JSON client of ``service`` when ``bentoml serve`` runs it as a separate process, else ``None``."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    from service.settings import get_settings

    url = BentoMLContainer.remote_runner_mapping.get().get(service.name)
    if not url:
        return None
    return ModelHTTP(url, propagate_traces=get_settings().tracing_enabled)
