"""How the API service talks to the model service: plain JSON, one retry, and concurrent row calls coalesced.

Three things happen here, each for a reason measured in ``loadtest/results``:

* **JSON, not pickle.** ``bentoml.depends`` talks to a dependency in BentoML's pickle format, so the model
  process would unpickle whatever reaches its socket. :func:`model_proxy` builds the same client speaking
  ``application/json`` (the model service's inputs and outputs are small integer rows and ``m × 2`` float
  arrays), and the model service refuses pickled bodies (``service.model_service.RefusePickle``). Nothing on the
  serving path unpickles anything.
* **Coalescing.** Every HTTP call into the model process costs ~2 ms of framework CPU there, whatever its size,
  while scoring a user costs 0.1–0.7 ms. :class:`Coalescer` sends concurrent ``recommend``/``similar`` rows as
  one call: when fewer than ``in_flight`` calls are outstanding a row leaves at once (no waiting window, so a
  lone request is not delayed); otherwise it queues and leaves with the rows that queued beside it. The model
  service's adaptive batching still merges the calls of several API workers or replicas.
* **One retry** after a 503 or a dropped connection (see :class:`ModelClient`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

Rows = np.ndarray  # b × w int64: one row per question, e.g. [user index, n, exclude_seen]


class Coalescer:
    """``await submit(rows)`` → one answer per row; rows submitted while calls are in flight share one call.

    ``call(rows)`` must return one answer per row, in order. A caller's rows are never split; a call carries at
    most ``max_rows`` rows unless a single caller brings more. A failed call fails every caller in it.
    """

    def __init__(self, call: Callable[[Rows], Awaitable[list[Any]]], max_rows: int = 64, in_flight: int = 1) -> None:
        if max_rows < 1 or in_flight < 1:
            raise ValueError("max_rows and in_flight must be at least 1")
        self._call, self.max_rows, self.in_flight = call, max_rows, in_flight
        self._pending: list[tuple[Rows, asyncio.Future]] = []
        self._tasks: set[asyncio.Task] = set()  # the event loop keeps only weak references to tasks
        self._running = 0
        self.calls = 0  # model calls made (for tests and the benchmark's reading)

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
        finally:
            self._running -= 1
            self._launch()


class ModelClient:
    """Calls the model service: a JSON RemoteProxy when served, the service instance when in-process.

    One retry after a 503 ("process is overloaded" from the adaptive batcher), which a burst can trigger, or after
    a dropped connection (a model worker died, or closed a kept-alive connection as we wrote to it): model calls
    are reads, so repeating one is safe, and a new connection waits for the respawned worker. A model service
    still unreachable after that is a 503 (not a 500), which a load balancer retries on another replica.

    ``rows(method, rows)`` goes through a :class:`Coalescer` per method; ``call`` is one call as it is.
    """

    def __init__(self, get_model: Callable[[], Any], retries: int = 1, max_rows: int = 64, in_flight: int = 1) -> None:
        self._get_model, self.retries = get_model, retries
        self.max_rows, self.in_flight = max_rows, in_flight
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

            coalescer = self.coalescers[method] = Coalescer(call, self.max_rows, self.in_flight)
        return await coalescer.submit(rows)

    async def close(self) -> None:
        close = getattr(self._model, "close", None)
        if close is not None and asyncio.iscoroutinefunction(close):
            await close()


def model_proxy(service: Any) -> Any | None:
    """A JSON client of ``service`` when ``bentoml serve`` runs it as a separate process, else ``None``.

    ``bentoml.depends`` would build the same client with the pickle media type; this one serialises with JSON.
    """
    from _bentoml_impl.client import RemoteProxy
    from bentoml._internal.configuration.containers import BentoMLContainer

    url = BentoMLContainer.remote_runner_mapping.get().get(service.name)
    if not url:
        return None
    return RemoteProxy(url, service=service, media_type="application/json")
