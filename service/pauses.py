"""Keep garbage-collection pauses out of the latency tail: :func:`steady_worker`, called by each service.

Measured with a ``gc.callbacks`` probe in the API workers at 16–32 clients (50k items): full (generation 2)
collections of 85–280 ms about once a second while p50 was 20–35 ms — they *were* the p99 (110–290 ms). Two
causes, two fixes:

1. **BentoML's request timeout.** ``bentoml._internal.server.http.traffic.TimeoutMiddleware`` (on every
   BentoML 1.4 service, ``traffic.timeout``) schedules ``loop.call_later(timeout, ...)`` per request and never
   cancels it. Each timer keeps its request's future and a copy of its context variables (OpenTelemetry span
   and all) alive for the whole timeout: at 600 requests/s and 30 s, ~18,000 requests' worth of objects (5,600
   live timers counted in one worker) that every full collection walks. :func:`cancel_request_timers` gives
   ``TimeoutMiddleware`` the same ``__call__`` plus a ``cancel()`` of the timer when the request ends.
2. **The start-up heap.** Imports (BentoML, pydantic, numpy, scipy…) and the loaded model leave ~150k tracked
   objects that live as long as the process and that each full collection walks again (85–105 ms once the
   timers were fixed). :func:`freeze_startup_heap` moves them to the permanent generation (``gc.freeze()``).

Together: p99 41 ms at 16 clients and 51 ms at 32 (was 120–180 and 135–290); the slowest collection 6 ms.
Called at the end of each service's ``__init__`` (in the worker process, before it serves), never at import.
"""

from __future__ import annotations

import asyncio
from typing import Any

_PATCHED = False  # per process


async def _call(self, scope, receive, send) -> None:
    """``TimeoutMiddleware.__call__`` as in BentoML 1.4, with the timer cancelled at the end of the request."""
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: Any) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    try:
        try:
            await waiter
        except TimeoutError:
            if fut.cancel():
                from starlette.responses import JSONResponse

                resp = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                    status_code=504)
                await resp(scope, receive, send)
        else:
            await fut
    finally:
        timer.cancel()


def cancel_request_timers() -> bool:
    """Install the fix once per process; ``False`` if BentoML's middleware is not the one this was written for."""
    global _PATCHED
    if _PATCHED:
        return True
    try:
        from bentoml._internal.server.http.traffic import TimeoutMiddleware
    except ImportError:
        return False
    if not all(hasattr(TimeoutMiddleware, name) for name in ("_set_timer_out", "__call__")):
        return False
    TimeoutMiddleware.__call__ = _call
    _PATCHED = True
    return True


def freeze_startup_heap() -> None:
    """Collect once, then move every object alive now to the permanent generation (never walked again)."""
    import gc

    gc.collect()
    gc.freeze()


def steady_worker() -> None:
    """Both fixes; call at the end of a service's ``__init__``. Only in a BentoML worker process: a service built
    in-process (tests, scripts) leaves its interpreter's garbage collector and BentoML's classes alone."""
    from bentoml._internal.context import server_context

    if server_context.worker_index is None:  # set by BentoML's worker before it loads the service
        return
    cancel_request_timers()
    freeze_startup_heap()
