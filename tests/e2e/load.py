"""A small async HTTP load for the fault tests and the soak: a realistic request mix, closed or fixed-rate loops.

Every loop is bounded in time *and* in request count, and talks to one loopback URL. Results keep the start time
(seconds since the loop began), the latency and the status (0 = transport error, with its message).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import httpx

N_USERS, N_ITEMS = 60, 40  # the small test model: u0..u59, i0..i39


@dataclass(frozen=True)
class Result:
    started: float
    latency: float
    status: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


def request_for(rng: random.Random) -> tuple[str, dict]:
    """One request of the mix: 60 % /recommend (~15 % unknown users), 10 % each of the other endpoints.

    k varies widely, so answers are a mix of cache hits and misses (and of model calls)."""
    user = f"u{rng.randrange(N_USERS + 10)}"
    k = rng.randint(1, 40)
    roll = rng.random()
    if roll < 0.6:
        return "/recommend", {"user_id": user, "k": k, "exclude_seen": rng.random() < 0.5}
    if roll < 0.7:
        return "/recommend/batch", {"user_ids": [f"u{rng.randrange(N_USERS + 10)}" for _ in range(5)], "k": k}
    if roll < 0.8:
        return "/similar-items", {"item_id": f"i{rng.randrange(N_ITEMS)}", "k": k}
    if roll < 0.9:
        return "/score", {"user_id": user, "item_ids": [f"i{rng.randrange(N_ITEMS)}" for _ in range(3)]}
    return "/recommend/history", {"items": [{"item_id": f"i{rng.randrange(N_ITEMS)}", "value": rng.randint(1, 9)}
                                            for _ in range(3)], "k": k}


def client(url: str, connections: int, timeout: float = 30.0) -> httpx.AsyncClient:
    # keep-alive shorter than the server's 5 s, so the client never reuses a connection the server is closing
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout)


async def _one(http: httpx.AsyncClient, path: str, body: dict, began: float) -> Result:
    t0 = time.perf_counter()
    try:
        status, error = (await http.post(path, json=body)).status_code, None
    except httpx.HTTPError as exc:
        status, error = 0, f"{type(exc).__name__}: {exc}"
    return Result(t0 - began, time.perf_counter() - t0, status, error)


async def closed_loop(url: str, concurrency: int, seconds: float, *, max_requests: int = 200_000,
                      seed: int = 0) -> list[Result]:
    """``concurrency`` workers, each sending its next request when the previous one is answered."""
    results: list[Result] = []
    began = time.perf_counter()
    deadline = began + seconds

    async with client(url, concurrency) as http:
        async def worker(n: int) -> None:
            rng = random.Random(seed * 1000 + n)
            while time.perf_counter() < deadline and len(results) < max_requests:
                results.append(await _one(http, *request_for(rng), began))

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return results


async def open_loop(url: str, rps: float, seconds: float, *, max_in_flight: int = 256, seed: int = 0) -> list[Result]:
    """Requests sent at a fixed rate whatever the answers (arrivals do not wait for answers), at most
    ``max_in_flight`` outstanding: a request that would exceed it counts as an error (status -1, "client backlog")
    rather than silently lowering the rate."""
    rng = random.Random(seed)
    results: list[Result] = []
    tasks: set[asyncio.Task] = set()
    began = time.perf_counter()
    total = int(rps * seconds)
    async with client(url, max_in_flight) as http:
        for i in range(total):
            due = began + i / rps
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            if len(tasks) >= max_in_flight:
                results.append(Result(time.perf_counter() - began, 0.0, -1, "client backlog"))
                continue
            task = asyncio.get_running_loop().create_task(_one(http, *request_for(rng), began))
            tasks.add(task)
            task.add_done_callback(lambda t: (tasks.discard(t), results.append(t.result())))
        if tasks:
            await asyncio.wait(tasks, timeout=60)
    return results


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary(results: list[Result], start: float = 0.0, end: float = float("inf")) -> dict:
    """Counts and latency percentiles (ms) of the requests *started* in ``[start, end)``."""
    chosen = [r for r in results if start <= r.started < end]
    lat = [r.latency * 1000 for r in chosen]
    statuses: dict[int, int] = {}
    for r in chosen:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return {"requests": len(chosen), "errors": sum(not r.ok for r in chosen), "statuses": statuses,
            "p50_ms": round(percentile(lat, 50), 1), "p99_ms": round(percentile(lat, 99), 1),
            "max_ms": round(max(lat), 1) if lat else float("nan")}
