"""Soak: serve the bento, hold a fixed request rate for N minutes, watch the served process tree's memory.

    python -m tests.e2e.soak --minutes 10 --rps 200      # fixed rate
    python -m tests.e2e.soak --minutes 10 --rps auto     # first a short open-loop ramp: 80 % of the max it finds
    python -m tests.e2e.soak --ramp-only                 # just measure the max rate of this client on this machine

Not part of ``make test``. What it does: fits the small test model, stores it in a throwaway BENTOML_HOME, starts
a password-protected throwaway redis-server and ``bentoml serve service:Timbral`` (cache and rate limiter on; the
limit is twice a minute of the soak's traffic, so it never trips), then sends the request mix of
``tests/e2e/load.py`` at the given rate (open loop: arrivals do not wait for answers) and samples the RSS of
``bentoml serve`` and every child process every ``--sample-every`` seconds (psutil). It prints the error check,
the RSS curve (total, API worker, model worker) and the growth from minute 2 to the end, and exits 1 on any
failed request. Everything runs on loopback and stops by itself; all processes are stopped at the end.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402

from loadtest.servers import server_pids  # noqa: E402
from tests.e2e.conftest import serve_env  # noqa: E402
from tests.e2e.helpers import BentoServer, fit_small_model, store_model  # noqa: E402
from tests.e2e.load import open_loop, summary  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

MB = 1024 * 1024


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.e2e.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="soak duration (at most 120)")
    p.add_argument("--rps", default="auto", help="requests per second, or 'auto': 80 %% of the ramp's maximum")
    p.add_argument("--ramp-only", action="store_true", help="measure the maximum rate and stop")
    p.add_argument("--ramp-rates", default="25,50,75,100,125,150,175,200,250,300,350,400,500",
                   help="offered rates of the ramp (req/s)")
    p.add_argument("--ramp-seconds", type=float, default=10.0, help="seconds per ramp step")
    p.add_argument("--ramp-p99-ms", type=float, default=500.0, help="p99 a ramp step may not exceed")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS samples")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    if not 0 < args.minutes <= 120:
        p.error("--minutes must be in (0, 120]")
    if args.rps != "auto" and not 0 < float(args.rps) <= 5000:
        p.error("--rps must be 'auto' or in (0, 5000]")
    return args


def tree_rss(root_pid: int) -> dict[str, float]:
    """RSS in MiB of ``bentoml serve`` and its children: total, the API worker(s), the model worker(s)."""
    out = {"total": 0.0, "api": 0.0, "model": 0.0}
    for role, pids in server_pids(root_pid).items():
        for pid in pids:
            try:
                rss = psutil.Process(pid).memory_info().rss / MB
            except psutil.Error:
                continue
            out["total"] += rss
            if role in out:
                out[role] += rss
    return {k: round(v, 1) for k, v in out.items()}


def ramp(url: str, rates: list[float], seconds: float, p99_budget_ms: float) -> float:
    """The same open-loop client at rising rates; the max is the highest rate answered in full, without an error
    and with p99 within ``p99_budget_ms``. Stops at the first rate that misses (overload only gets worse)."""
    print(f"ramp: {seconds:.0f} s per rate, open loop, pass = no error, >= 97 % answered, p99 <= {p99_budget_ms:.0f} ms")
    best = 0.0
    for rate in rates:
        results = asyncio.run(open_loop(url, rate, seconds, max_in_flight=512, seed=int(rate)))
        s = summary(results)
        answered = sum(r.ok for r in results) / seconds
        passed = s["errors"] == 0 and answered >= 0.97 * rate and s["p99_ms"] <= p99_budget_ms
        print(f"  {rate:6.0f} req/s offered: {answered:7.1f} answered/s  p50 {s['p50_ms']:7.1f} ms  "
              f"p99 {s['p99_ms']:7.1f} ms  errors {s['errors']}  {'ok' if passed else 'MISSED'}", flush=True)
        if not passed:
            break
        best = rate
        time.sleep(2)
    print(f"max: {best:.0f} req/s")
    return best


async def soak(url: str, pid: int, rps: float, seconds: float, every: float) -> tuple[list, list]:
    samples: list[tuple[float, dict]] = []
    began = time.perf_counter()
    done = asyncio.Event()

    async def sampler() -> None:
        while not done.is_set():
            samples.append((time.perf_counter() - began, tree_rss(pid)))
            t, rss = samples[-1]
            print(f"  {t:6.0f} s  RSS total {rss['total']:7.1f} MiB  api {rss['api']:6.1f}  model {rss['model']:6.1f}",
                  flush=True)
            try:
                await asyncio.wait_for(done.wait(), timeout=every)
            except TimeoutError:
                pass

    task = asyncio.get_running_loop().create_task(sampler())
    try:
        results = await open_loop(url, rps, seconds, max_in_flight=512)
    finally:
        done.set()
        await task
    samples.append((time.perf_counter() - began, tree_rss(pid)))
    t, rss = samples[-1]
    print(f"  {t:6.0f} s  RSS total {rss['total']:7.1f} MiB  api {rss['api']:6.1f}  model {rss['model']:6.1f}  (end)")
    return results, samples


def growth(samples: list[tuple[float, dict]], from_s: float = 120.0) -> dict:
    later = [(t, r) for t, r in samples if t >= from_s]
    if len(later) < 2:
        return {}
    (t0, r0), (t1, r1) = later[0], later[-1]
    out = {"from_s": round(t0), "to_s": round(t1)}
    for key in ("total", "api", "model"):
        out[key] = {"start_mib": r0[key], "end_mib": r1[key], "growth_mib": round(r1[key] - r0[key], 1),
                    "growth_pct": round(100 * (r1[key] - r0[key]) / r0[key], 2) if r0[key] else None}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="timbral-soak-"))
    home = work / "bentoml"
    tag = store_model(fit_small_model(seed=0), home)
    redis = RedisServer(work / "redis", password="soak-" + os.urandom(6).hex()).start()
    server, ok = None, False
    try:
        rps = None if args.rps == "auto" else float(args.rps)
        limit = f"{int((rps or 2000) * 120)}/minute"  # twice a minute of traffic: on, never tripping
        env = serve_env(tag, redis.url, RATE_LIMIT=limit, LOG_LEVEL="WARNING")
        server = BentoServer("service:Timbral", home, env=env, log_path=work / "serve.log").start()
        print(f"serving {tag} at {server.url} (pid {server.proc.pid}); logs in {work}")
        print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
        max_rps = None
        if args.ramp_only or rps is None:
            max_rps = ramp(server.url, [float(x) for x in args.ramp_rates.split(",")], args.ramp_seconds,
                           args.ramp_p99_ms)
            if args.ramp_only:
                return 0
            rps = round(0.8 * max_rps, 1)
        seconds = args.minutes * 60
        print(f"soak: {rps} req/s for {args.minutes:g} min (open loop), RSS every {args.sample_every:g} s")
        results, samples = asyncio.run(soak(server.url, server.proc.pid, rps, seconds, args.sample_every))
        s = summary(results)
        g = growth(samples)
        achieved = s["requests"] / seconds
        print(f"\nrequests {s['requests']} ({achieved:.1f}/s of {rps} wanted)  errors {s['errors']}  "
              f"statuses {s['statuses']}  p50 {s['p50_ms']} ms  p99 {s['p99_ms']} ms  max {s['max_ms']} ms")
        by_minute = [summary(results, m * 60, (m + 1) * 60) for m in range(int(args.minutes + 0.999))]
        print("p99 by minute (ms): " + " ".join(str(m["p99_ms"]) for m in by_minute))
        if g:
            print(f"RSS growth from {g['from_s']} s to {g['to_s']} s: " + "; ".join(
                f"{k} {g[k]['start_mib']} -> {g[k]['end_mib']} MiB ({g[k]['growth_mib']:+} MiB, "
                f"{g[k]['growth_pct']:+}%)" for k in ("total", "api", "model")))
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print("zero errors: " + ("yes" if s["errors"] == 0 else f"NO ({s['errors']} failed)"))
        if args.json:
            Path(args.json).write_text(json.dumps({
                "max_rps": max_rps, "rps": rps, "minutes": args.minutes, "summary": s, "growth": g,
                "p99_by_minute": [m["p99_ms"] for m in by_minute], "rss": [[round(t), r] for t, r in samples]},
                indent=1))
        ok = s["errors"] == 0
        return 0 if ok else 1
    finally:
        if server is not None:
            server.stop()
        redis.stop()
        if ok or args.ramp_only:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work} (serve.log) for a look")


if __name__ == "__main__":
    sys.exit(main())
