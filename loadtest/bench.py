"""``make bench``: one command, one run, every row measured side by side on this machine; the report goes to
``loadtest/results/<date>.md`` and ``.json`` (figures and ratios, never pass/fail on absolute times).

1. the physical limit: in-process scoring throughput of the core (``bench_core``); for the largest served
   size it is measured again at every load level, between the served rows (the ratio's denominator);
2. the bento served with adaptive batching on and off, 50k and 200k items (``bench_served``);
3. the peer: ``mlflow models serve`` of the same fitted 50k-item model, same load;
4. the cache: the same load with every answer cached vs none;
5. the headline: max RPS with p99 <= 50 ms per server, and the ratios (``bench_report``).

    python -m loadtest.bench            # full run, ~15-25 min on 2 cores
    python -m loadtest.bench --quick    # tiny sizes and short levels (the e2e test)

BLAS is pinned to one thread in this process and in every server (OPENBLAS/OMP/MKL_NUM_THREADS=1, the
service's BLAS_THREADS=1): the model service has one core, the API process the other. All servers of one
catalog size run at once and are measured in turn at each level (``bench_served``): on a shared machine the
comparison between them stays fair when the background load drifts.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from pathlib import Path  # noqa: E402

from loadtest import bench_core, bench_report  # noqa: E402
from loadtest.bench_served import Sweep, Target, run_interleaved  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BATCH_ENDPOINT_USERS = 32
# context rows of the largest size: (key suffix, one setting changed, what it shows)
VARIANTS = [
    ("hold-off", {"MODEL_CALL_HOLD": "0"}, "the API sends each model call at once instead of holding its slot under load"),
    ("direct-off", {"DIRECT_ANSWERS": "false"},
     "every request through BentoML's route instead of the direct lane (service/direct_answers.py)"),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, short levels (for the e2e test)")
    p.add_argument("--out", default=str(REPO / "loadtest" / "results"), help="directory of <date>.md/.json")
    p.add_argument("--core-sizes", default="10000,50000,200000,1000000", help="catalog sizes of row 1")
    p.add_argument("--served-sizes", default="50000,200000", help="catalog sizes served (first: peer and cache)")
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--levels", default="1,4,8,12,16,24,32,48,64",
                   help="concurrent clients per level (about sqrt(2) apart from 4 up, every server alike)")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per level")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    p.add_argument("--core-seconds", type=float, default=3.0, help="seconds per in-process measurement")
    p.add_argument("--fit-max-items", type=int, default=60_000,
                   help="served models up to this many items are NMF-fitted, larger ones get random factors")
    p.add_argument("--mlflow-workers", default="1,2", help="uvicorn workers of mlflow models serve (comma list)")
    p.add_argument("--probe-workers", type=int, default=2,
                   help="API workers of the in-process probe (context rows); 0 skips it")
    p.add_argument("--skip-mlflow", action="store_true")
    p.add_argument("--skip-cache", action="store_true")
    p.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one, removed)")
    args = p.parse_args(argv)
    if args.quick:
        args.core_sizes, args.served_sizes, args.levels = "10000", "6000", "1,4"
        args.duration, args.warmup, args.core_seconds, args.mlflow_workers = 1.0, 0.3, 0.3, "1"
    return args


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.levels = _ints(args.levels)
        self.served_sizes = _ints(args.served_sizes)
        self.sweeps: list[Sweep] = []
        self.notes: list[str] = []
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="timbral-bench-"))
        self.home = self.work / "bentoml"  # outside the repo: `bentoml build` would copy a store inside it
        self.home.mkdir(parents=True, exist_ok=True)

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def target(self, sweep: Sweep, url: str, bodies, pids, **kw) -> Target:
        self.sweeps.append(sweep)
        return Target(sweep, url, bodies, pids, **kw)

    # ----------------------------------------------------------------------------------------- servers
    def serve_bento(self, stack: ExitStack, tag: str, log_name: str, **start_kw):
        """``(server, pids)``: a bento started with ``start_kw`` (``loadtest.servers.start_bento``), stopped when
        ``stack`` closes, its log in the work directory."""
        from loadtest.servers import server_pids, start_bento

        server = start_bento(self.home, tag, log_path=self.work / f"{log_name}.log", **start_kw)
        stack.callback(server.stop)
        return server, server_pids(server.proc.pid)

    def bento_targets(self, stack: ExitStack, n: int, tag: str, ids, label: str, batch_endpoint: bool) -> list[Target]:
        from loadtest.servers import batching_off
        from loadtest.traffic import recommend_bodies

        bodies = recommend_bodies(ids, 4096, seed=1)
        targets = []
        for batching in (True, False):
            key = f"ours-{label}-batching-{'on' if batching else 'off'}"
            note = "MAX_BATCH_SIZE=64, MAX_LATENCY_MS=1000" if batching else batching_off()[2]
            server, pids = self.serve_bento(stack, tag, key, batching=batching)
            sweep = Sweep(key, f"bento, {label} items, batching {'on' if batching else 'off'}, cache off", "bento", n,
                          notes=[note])
            targets.append(self.target(sweep, f"{server.url}/recommend", lambda c: bodies, pids))
            if batching and batch_endpoint:  # context for the served/in-process ratio: many users per request
                targets.append(self.batch_endpoint_target(stack, n, tag, ids, label))
                for variant in VARIANTS:
                    targets.append(self.variant_target(stack, n, tag, bodies, label, *variant))
        if self.args.probe_workers:
            targets.append(self.probe_target(stack, n, tag, bodies, label))
        return targets

    def batch_endpoint_target(self, stack: ExitStack, n: int, tag: str, ids, label: str) -> Target:
        """POST /recommend/batch on a bento of its own: its 32-row calls would retrain the adaptive batcher
        that the /recommend rows are measured on."""
        from loadtest.traffic import batch_bodies

        per, key = BATCH_ENDPOINT_USERS, f"ours-{label}-batch-endpoint"
        many = batch_bodies(ids, 512, per, seed=2)
        server, pids = self.serve_bento(stack, tag, key, batching=True)
        sweep = Sweep(key, f"bento, {label} items, POST /recommend/batch with {per} users per request "
                      f"(RPS = requests; users/s = {per} x RPS)", "bento", n,
                      notes=["context only: the per-request rows are the ones compared with the targets"],
                      extra={"users_per_request": per})
        return self.target(sweep, f"{server.url}/recommend/batch", lambda c: many, pids, max_level=16)

    def variant_target(self, stack: ExitStack, n: int, tag: str, bodies: list[bytes], label: str, suffix: str,
                       env: dict[str, str], note: str) -> Target:
        """The batching-on bento with one setting changed (``VARIANTS``), measured side by side with the default."""
        key = f"ours-{label}-{suffix}"
        server, pids = self.serve_bento(stack, tag, key, batching=True, extra_env=env)
        setting = ", ".join(f"{k}={v}" for k, v in env.items())
        sweep = Sweep(key, f"bento, {label} items, batching on, cache off, {setting}", "bento", n,
                      notes=[f"context: {note}"], extra={"env": env})
        return self.target(sweep, f"{server.url}/recommend", lambda c: bodies, pids)

    def probe_target(self, stack: ExitStack, n: int, tag: str, bodies: list[bytes], label: str) -> Target:
        """Context: the same requests with the scoring inside the API process (loadtest/probe_inprocess.py)."""
        from loadtest.servers import serve_env, server_pids
        from tests.e2e.helpers import BentoServer

        workers, key = self.args.probe_workers, f"probe-{label}-inprocess"
        server = BentoServer("loadtest.probe_inprocess:TimbralProbe", self.home,
                             env={**serve_env(tag), "PROBE_WORKERS": str(workers)},
                             log_path=self.work / f"{key}.log").start(timeout=300)
        stack.callback(server.stop)
        sweep = Sweep(key, f"probe (not the bento): scoring in the API process, {label} items, {workers} worker(s)",
                      "probe", n, notes=["loadtest/probe_inprocess.py: no API→model HTTP hop, natural batching"])
        return self.target(sweep, f"{server.url}/recommend", lambda c: bodies, server_pids(server.proc.pid))

    def cache_targets(self, stack: ExitStack, n: int, tag: str, ids, label: str) -> list[Target]:
        import redis

        from loadtest.client import post_all
        from loadtest.traffic import recommend_bodies
        from tests.servers import RedisServer

        redis_server = RedisServer(self.work / "redis").start()
        stack.callback(redis_server.stop)
        client = redis.Redis.from_url(redis_server.url)
        server, pids = self.serve_bento(stack, tag, f"cache-{label}", batching=True, cache=True,
                                        redis_url=redis_server.url, extra_env={"CACHE_TTL": "7200"})
        url = f"{server.url}/recommend"

        def keyspace() -> tuple[int, int]:
            info = client.info("stats")
            return int(info["keyspace_hits"]), int(info["keyspace_misses"])

        def tracking(sweep: Sweep):
            start: dict[int, tuple[int, int]] = {}

            def before(c: int) -> None:
                start[c] = keyspace()

            def after(c: int, _result) -> None:
                (h0, m0), (h1, m1) = start[c], keyspace()
                sweep.extra.setdefault("redis", {})[f"{sweep.key}:{c}"] = {
                    "hits": h1 - h0, "misses": m1 - m0, "hit_ratio": round((h1 - h0) / max(1, h1 - h0 + m1 - m0), 4)}
            return {"before": before, "after": after}

        pool = recommend_bodies(ids, 2000, seed=3, nonce="warm")
        self.log(f"    cache warmed with {len(pool)} answers: {dict(post_all(url, pool))}")
        hit = Sweep(f"ours-{label}-cache-hit", f"bento, {label} items, batching on, every answer cached", "bento", n,
                    notes=["2,000 distinct requests, each answered once beforehand"])
        miss = Sweep(f"ours-{label}-cache-miss", f"bento, {label} items, batching on, nothing cached", "bento", n,
                     notes=["every request a new cache key (an unknown item in exclude_items: same model work)"])
        per_level = 30_000 if not self.args.quick else 3_000
        fresh = iter(range(1_000_000))
        return [self.target(hit, url, lambda c: pool, pids, **tracking(hit)),
                self.target(miss, url, lambda c: recommend_bodies(ids, per_level, seed=4 + c, nonce=f"m{next(fresh)}"),
                            pids, **tracking(miss))]

    def mlflow_targets(self, stack: ExitStack, n: int, model, ids, label: str) -> list[Target]:
        from loadtest.servers import MlflowServe, register_in_mlflow, server_pids
        from loadtest.traffic import mlflow_bodies
        from training.local_stack import LocalStack

        bodies = mlflow_bodies(ids, 4096, seed=1)
        local = stack.enter_context(LocalStack(self.work / "mlflow-stack"))
        registered = register_in_mlflow(model, local, name="timbral-bench")
        self.log(f"    registered the same fitted model as {registered.model_uri}")
        targets = []
        for workers in _ints(self.args.mlflow_workers):
            srv = stack.enter_context(MlflowServe(registered.model_uri, registered.client_env, self.work, workers=workers))
            sweep = Sweep(f"mlflow-{label}-w{workers}", f"mlflow models serve, {label} items, {workers} worker(s)",
                          "mlflow", n, notes=[f"{registered.model_uri}, --env-manager local, --workers {workers}"])
            targets.append(self.target(sweep, f"{srv.url}/invocations", lambda c: bodies, server_pids(srv.proc.pid)))
        return targets

    # --------------------------------------------------------------------------------------------- run
    def run(self) -> dict:
        from loadtest.models import ModelSpec, build_model, store
        from loadtest.traffic import Ids

        args, started = self.args, time.perf_counter()
        meta = bench_report.machine_meta()
        self.log(f"timbral bench: {meta['cpu']} x{meta['cores']}, load average {meta['loadavg_start']}")
        self.log("1. physical limit (in-process core)")
        core = bench_core.run(_ints(args.core_sizes), args.factors, args.core_seconds, self.log)
        models, limit = [], None
        for i, n in enumerate(self.served_sizes):
            label = f"{n // 1000}k" if n >= 1000 else str(n)
            spec = ModelSpec(n_items=n, factors=args.factors, fitted=n <= args.fit_max_items)
            self.log(f"2-4. served, {label} items: building the model ({spec.describe()})")
            model = build_model(spec, log=self.log)
            tag, path = store(model, self.home, version=f"bench-{n}")
            models.append({"n_items": n, "tag": tag, "spec": spec.describe()})
            ids = Ids.from_model_dir(path)
            with ExitStack() as stack:
                self.log("    starting the servers of this size")
                targets = self.bento_targets(stack, n, tag, ids, label, batch_endpoint=i == len(self.served_sizes) - 1)
                if i == 0 and not args.skip_cache:
                    targets += self.cache_targets(stack, n, tag, ids, label)
                if i == 0 and not args.skip_mlflow:
                    targets += self.mlflow_targets(stack, n, model, ids, label)
                del model
                alongside = None
                if i == len(self.served_sizes) - 1:  # the size of the served / in-process ratio
                    limit = bench_core.LimitProbe(n, args.factors)
                    alongside = self.limit_alongside(limit)
                run_interleaved(targets, self.levels, args.duration, args.warmup, 0.5 if args.quick else 3.0, self.log,
                                alongside=alongside)
        meta.update(bench_report.end_meta(started))
        return {"meta": {**meta, "models": models, "levels": self.levels, "duration_s": args.duration,
                         "warmup_s": args.warmup, "factors": args.factors, "quick": args.quick,
                         "served_sizes": self.served_sizes, "notes": self.notes},
                "core": core, "core_alongside": limit.as_dict() if limit else None,
                "sweeps": [s.as_dict() for s in self.sweeps]}

    def limit_alongside(self, limit: bench_core.LimitProbe):
        def measure(c: int) -> None:
            users_per_s = limit.measure(self.args.core_seconds, concurrency=c)
            self.log(f"    {'in-process limit':<28} c={c:<3} {users_per_s:8.1f} users/s (batches of {limit.batch})")
        return measure


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    bench = Bench(args)
    try:
        results = bench.run()
    finally:
        if args.workdir is None:
            shutil.rmtree(bench.work, ignore_errors=True)
    results["meta"]["argv"] = argv  # the report names the command that produced it
    results["ratios"] = bench_report.ratios(results)
    md_path, json_path = bench_report.write(results, Path(args.out))
    print(bench_report.headline_text(results))
    print(f"report: {md_path}\n        {json_path}")
    return 0


if __name__ == "__main__":
    from training.local_stack import main_stopping_on_sigterm

    sys.exit(main_stopping_on_sigterm(main, "bench"))
