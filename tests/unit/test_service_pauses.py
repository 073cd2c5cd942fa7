"""service.pauses: BentoML's per-request timeout timers are cancelled when a request ends (the timeout itself
still works), and a worker's start-up heap is frozen out of full collections."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from service.pauses import cancel_request_timers


def live_request_timers(loop) -> int:
    return sum(1 for h in loop._scheduled if not h.cancelled()
               and getattr(h._callback, "__name__", "") == "_set_timer_out")


async def answer(scope, receive, send, delay: float = 0.0) -> None:
    await asyncio.sleep(delay)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def request(middleware) -> list[dict]:
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    await middleware({"type": "http", "path": "/x", "method": "POST", "headers": []}, receive, send)
    return sent


def test_finished_requests_leave_no_live_timer_and_the_timeout_still_answers_504():
    assert cancel_request_timers() and cancel_request_timers()  # idempotent

    async def scenario():
        loop = asyncio.get_running_loop()
        quick = TimeoutMiddleware(answer, timeout=30)
        for _ in range(50):
            assert (await request(quick))[0]["status"] == 200
        assert live_request_timers(loop) == 0  # BentoML's own __call__ left 50 timers for 30 s

        async def slow(scope, receive, send):
            await answer(scope, receive, send, delay=5)

        late = await request(TimeoutMiddleware(slow, timeout=0.05))
        assert late[0]["status"] == 504 and b"0.05 seconds" in late[1]["body"]
        assert live_request_timers(loop) == 0

    asyncio.run(scenario())


def frozen_after_steady_worker(worker_index: int | None) -> tuple[int, int]:
    code = ("import gc; from bentoml._internal.context import server_context; "
            f"server_context.worker_index = {worker_index!r}; "
            "from service.pauses import steady_worker; before = gc.get_freeze_count(); steady_worker(); "
            "print(before, gc.get_freeze_count())")
    before, after = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                            check=True).stdout.split())
    return before, after


def test_steady_worker_freezes_the_start_up_heap():
    before, after = frozen_after_steady_worker(1)
    assert before == 0 and after > 10_000


def test_outside_a_bentoml_worker_steady_worker_changes_nothing():
    assert frozen_after_steady_worker(None) == (0, 0)
