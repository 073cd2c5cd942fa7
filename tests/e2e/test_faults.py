"""Faults under load: 16 concurrent clients for ~20 s while Redis is killed, Redis hangs, a model worker dies.

The served bento has the cache and the rate limiter on (a limit that never trips), both on a password-protected
Redis of this module. Figures (p99 by phase, error counts) are printed: run with ``-s`` to see them. Timing is
reported, never asserted; what is asserted is zero failed requests where Redis is at fault, and recovery where
the model service is.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import psutil
import pytest

from tests.e2e.load import closed_loop, summary

pytestmark = pytest.mark.slow

CONCURRENCY, SECONDS = 16, 20.0
FAULT_AT, FAULT_FOR = 5.0, 7.0


def _report(name: str, results, start: float, end: float) -> dict:
    phases = {"before": summary(results, 0, start), "during": summary(results, start, end),
              "after": summary(results, end), "all": summary(results)}
    print(f"\n{name}: {CONCURRENCY} clients, {SECONDS:.0f} s, fault from {start:.1f} s to {end:.1f} s")
    for phase, s in phases.items():
        print(f"  {phase:7s} {s['requests']:6d} requests  {s['errors']:4d} errors  p50 {s['p50_ms']:7.1f} ms  "
              f"p99 {s['p99_ms']:7.1f} ms  max {s['max_ms']:7.1f} ms  {s['statuses']}")
    failed = [r for r in results if not r.ok]
    for r in failed[:5]:
        print(f"  failed at {r.started:.2f} s: status {r.status} {r.error or ''}")
    return phases


async def _load_with_fault(url: str, fault, heal) -> list:
    async def faults() -> None:
        await asyncio.sleep(FAULT_AT)
        await asyncio.to_thread(fault)
        await asyncio.sleep(FAULT_FOR)
        await asyncio.to_thread(heal)

    results, _ = await asyncio.gather(closed_loop(url, CONCURRENCY, SECONDS), faults())
    return results


def _wait_for(predicate, timeout: float, step: float = 0.5) -> float | None:
    """Seconds until ``predicate()`` held, or None after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if predicate():
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(step)
    return None


def _health(server) -> dict:
    return httpx.get(f"{server.url}/health", timeout=10).json()


def test_redis_killed_and_restarted_under_load(served, module_redis):
    def kill() -> None:
        module_redis.proc.send_signal(signal.SIGKILL)
        module_redis.proc.wait(10)
        module_redis.proc = None

    results = asyncio.run(_load_with_fault(served.url, kill, module_redis.start))
    phases = _report("redis SIGKILL + restart", results, FAULT_AT, FAULT_AT + FAULT_FOR)
    assert phases["all"]["errors"] == 0, phases["all"]["statuses"]
    assert phases["during"]["requests"] > 0
    assert _wait_for(lambda: _health(served)["status"] == "ok", 30) is not None, _health(served)
    assert _health(served)["rate_limit"] == "ok"


def test_redis_paused_under_load(served, module_redis):
    pid = module_redis.proc.pid
    results = asyncio.run(_load_with_fault(served.url, lambda: os.kill(pid, signal.SIGSTOP),
                                           lambda: os.kill(pid, signal.SIGCONT)))
    phases = _report("redis SIGSTOP/SIGCONT", results, FAULT_AT, FAULT_AT + FAULT_FOR)
    print("  (REDIS_TIMEOUT_MS=50: a request waits at most ~50 ms per Redis call before going on without it)")
    assert phases["all"]["errors"] == 0, phases["all"]["statuses"]
    # answers kept coming while Redis hung: at least a request per client per second of the pause
    assert phases["during"]["requests"] >= CONCURRENCY * FAULT_FOR, phases["during"]
    assert _wait_for(lambda: _health(served)["status"] == "ok", 30) is not None, _health(served)


def _model_workers(server) -> list[psutil.Process]:
    """The model service's worker processes: children of `bentoml serve` started as
    ``python -m _bentoml_impl.worker.service ... --service-name TimbralModel``."""
    out = []
    for proc in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if "_bentoml_impl.worker.service" in cmd and "TimbralModel" in cmd:
            out.append(proc)
    return out


async def _first_model_answer(url: str, timeout: float) -> float | None:
    """Seconds until a request that needs the model (a fresh cache key) is answered, polling every 0.2 s."""
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        n = 0
        while time.monotonic() - started < timeout:
            n += 1
            body = {"user_id": "u1", "k": 3, "exclude_items": [f"probe-{n}-{time.monotonic()}"]}
            try:
                resp = await http.post("/recommend", json=body)
                if resp.status_code == 200 and resp.json()["strategy"] == "personalized":
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    return None


def test_model_worker_killed_under_load(served):
    workers = _model_workers(served)
    assert len(workers) == 1, workers
    victim = workers[0].pid
    recovery: list[float | None] = []

    async def scenario() -> list:
        async def kill_and_probe() -> None:
            await asyncio.sleep(FAULT_AT)
            os.kill(victim, signal.SIGKILL)
            recovery.append(await _first_model_answer(served.url, 90))

        results, _ = await asyncio.gather(closed_loop(served.url, CONCURRENCY, SECONDS), kill_and_probe())
        return results

    results = asyncio.run(scenario())
    phases = _report("model worker SIGKILL", results, FAULT_AT, SECONDS)
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"  errors from {min(r.started for r in failed):.2f} s to {max(r.started for r in failed):.2f} s "
              f"(kill at {FAULT_AT:.1f} s)")
    waited = recovery[0] if recovery else None
    print(f"  {phases['all']['errors']} failed requests of {phases['all']['requests']}; the first request "
          f"needing the model answered {'never' if waited is None else f'{waited:.1f} s'} after the kill")
    assert waited is not None, f"no answer from the model within 90 s of the kill:\n{served.log_tail()}"
    respawned = _model_workers(served)
    assert respawned and victim not in {p.pid for p in respawned}
    assert any(r.ok and r.started > FAULT_AT + waited for r in results) or SECONDS < FAULT_AT + waited, \
        "the load got no answer after the recovery"
