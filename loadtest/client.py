"""A closed-loop HTTP load generator: ``concurrency`` clients, each sending its next request as soon as the
previous answer arrived (asyncio + aiohttp, one process, keep-alive connections, bodies encoded beforehand).

It is cheap enough on 2 cores not to be the bottleneck, and it proves it: every measured level reports the
client process's own CPU (% of one core), the servers' CPU and what the rest of the machine used meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

JSON = {"Content-Type": "application/json"}


@dataclass
class LevelResult:
    concurrency: int
    seconds: float
    requests: int  # answers received within the window
    ok: int  # 2xx answers
    statuses: dict[str, int] = field(default_factory=dict)  # non-2xx status code -> count
    errors: dict[str, int] = field(default_factory=dict)  # exception type -> count (timeouts, resets)
    rps: float = 0.0  # 2xx answers per second
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    max_ms: float | None = None
    client_cpu_pct: float | None = None  # of one core
    server_cpu_pct: float | None = None  # all server processes together, of one core
    other_cpu_pct: float | None = None  # everything else on the machine, of one core
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)  # server CPU per 2xx answer, by process

    @property
    def failures(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    def as_dict(self) -> dict:
        return {**asdict(self), "failures": self.failures}


def latency_stats(latencies_s: list[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    ms = np.asarray(latencies_s) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(ms.mean()),
            "max_ms": float(ms.max())}


class CpuMeter:
    """CPU seconds of this process, of server processes (by role) and of the whole machine, between reads."""

    def __init__(self, server_pids: dict[str, list[int]] | list[int] | None = None) -> None:
        import psutil

        self._psutil = psutil
        roles = server_pids if isinstance(server_pids, dict) else {"server": list(server_pids or [])}
        self.procs: dict[str, list] = {}
        for role, pids in roles.items():
            for pid in pids:
                try:
                    self.procs.setdefault(role, []).append(psutil.Process(pid))
                except psutil.NoSuchProcess:
                    pass
        self.start()

    def _server_cpu(self) -> dict[str, float]:
        out = {}
        for role, procs in self.procs.items():
            out[role] = 0.0
            for p in procs:
                try:
                    t = p.cpu_times()
                    out[role] += t.user + t.system
                except self._psutil.NoSuchProcess:
                    pass
        return out

    def _machine_busy(self) -> float:
        t = self._psutil.cpu_times()
        return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0)

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._client0, self._server0, self._busy0 = time.process_time(), self._server_cpu(), self._machine_busy()

    def read(self) -> dict:
        wall = max(time.perf_counter() - self._t0, 1e-9)
        client = time.process_time() - self._client0
        now = self._server_cpu()
        by_role = {role: now[role] - self._server0.get(role, 0.0) for role in now}
        server = sum(by_role.values())
        other = max(0.0, self._machine_busy() - self._busy0 - client - server)
        return {"client_cpu_pct": 100 * client / wall, "server_cpu_pct": 100 * server / wall if self.procs else None,
                "other_cpu_pct": 100 * other / wall, "cpu_seconds_by_role": by_role}


async def _run(url: str, bodies: list[bytes], concurrency: int, duration: float, warmup: float,
               server_pids: dict[str, list[int]] | list[int] | None, timeout: float) -> LevelResult:
    import aiohttp

    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    counter = iter(range(1 << 62))
    n_bodies = len(bodies)
    loop = time.perf_counter
    start = loop()
    window = [start + warmup, start + warmup + duration]
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:

        async def one_client() -> None:
            while True:
                t0 = loop()
                if t0 >= window[1]:
                    return
                body = bodies[next(counter) % n_bodies]
                try:
                    async with session.post(url, data=body, headers=JSON) as resp:
                        await resp.read()
                        status = resp.status
                    t1 = loop()
                    if t0 >= window[0] and t1 <= window[1]:
                        latencies.append(t1 - t0)
                        if not 200 <= status < 300:
                            statuses[str(status)] += 1
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    if t0 >= window[0]:
                        errors[type(exc).__name__] += 1

        meter: dict[str, CpuMeter] = {}

        async def measure() -> dict[str, float]:
            await asyncio.sleep(max(0.0, window[0] - loop()))
            meter["m"] = CpuMeter(server_pids)
            await asyncio.sleep(max(0.0, window[1] - loop()))
            return meter["m"].read()

        measuring = asyncio.create_task(measure())
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        cpu = await measuring
    ok = len(latencies) - sum(statuses.values())
    by_role = cpu.pop("cpu_seconds_by_role")
    per_request = {role: 1000 * seconds / ok for role, seconds in by_role.items()} if ok else {}
    return LevelResult(concurrency=concurrency, seconds=duration, requests=len(latencies), ok=ok,
                       statuses=dict(statuses), errors=dict(errors), rps=ok / duration,
                       cpu_ms_per_request=per_request, **latency_stats(latencies), **cpu)


def closed_loop(url: str, bodies: list[bytes], concurrency: int, duration: float, warmup: float = 2.0,
                server_pids: dict[str, list[int]] | list[int] | None = None, timeout: float = 30.0) -> LevelResult:
    """Run ``concurrency`` closed-loop clients against ``url`` (POST, bodies cycled) and measure a window of
    ``duration`` seconds after ``warmup`` seconds."""
    if concurrency < 1 or duration <= 0 or not bodies:
        raise ValueError("need concurrency >= 1, duration > 0 and at least one body")
    return asyncio.run(_run(url, bodies, concurrency, duration, warmup, server_pids, timeout))


def post_all(url: str, bodies: list[bytes], concurrency: int = 16, timeout: float = 60.0) -> Counter[int]:
    """Send every body once (e.g. to fill the cache); returns the count of each status code."""
    import aiohttp

    async def run() -> Counter[int]:
        seen: Counter[int] = Counter()
        queue = iter(bodies)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:

            async def worker() -> None:
                for body in queue:
                    async with session.post(url, data=body, headers=JSON) as resp:
                        await resp.read()
                        seen[resp.status] += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return seen

    return asyncio.run(run())
