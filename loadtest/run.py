"""``make loadtest``: locust, headless, against the served bento; CSV stats, the HTML report and summary.json.

Without ``--host`` it starts what it needs in a scratch directory and stops it afterwards: a model of the
chosen size (generated listens; NMF-fitted, or random factors with ``--random-factors``) in a BentoML store of
its own, a throwaway ``redis-server`` (unless ``--no-cache``), and ``bentoml serve service:Timbral``. With
``--host`` it only runs locust, and ``--model-dir`` must name the served model's artifact directory (its ids).

Exit status: 0 when every SLO given (``--slo-p99-ms``, ``--slo-p95-ms``, ``--slo-max-error-rate``,
``--slo-min-rps``, all on the aggregate of every endpoint) was met, 1 when one was missed, 2 when the run
itself failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

from loadtest.summary import Slo, format_summary, summarise, write_summary

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("load")
    g.add_argument("--host", default=os.environ.get("LOADTEST_HOST") or None,
                   help="a running service (e.g. http://127.0.0.1:3000); default: start one")
    g.add_argument("--model-dir", default=os.environ.get("TIMBRAL_MODEL_DIR") or None,
                   help="artifact directory of the served model (required with --host)")
    g.add_argument("--users", type=int, default=64, help="simulated listeners")
    g.add_argument("--spawn-rate", type=float, default=16, help="listeners started per second")
    g.add_argument("--run-time", default="60s", help="locust duration, e.g. 90s, 5m")
    g.add_argument("--processes", type=int, default=1, help="locust processes (-1: one per core)")
    g.add_argument("--think-min", type=float, default=0.1)
    g.add_argument("--think-max", type=float, default=0.5)
    g.add_argument("--mix", default="", help="e.g. recommend=70,similar=10,history=8,batch=7,score=5")
    g.add_argument("--unknown-share", type=float, default=0.05)
    g.add_argument("--zipf", type=float, default=1.05)
    g.add_argument("--out", default=None, help="output directory (default loadtest/results/runs/<time>)")
    m = p.add_argument_group("model and server started without --host")
    m.add_argument("--items", type=int, default=50_000)
    m.add_argument("--catalog-users", type=int, default=None, help="default: items / 2")
    m.add_argument("--interactions", type=int, default=None, help="default: 20 per item")
    m.add_argument("--factors", type=int, default=64)
    m.add_argument("--max-iter", type=int, default=30)
    m.add_argument("--random-factors", action="store_true", help="skip fitting (timing is the same)")
    m.add_argument("--no-cache", action="store_true", help="serve with ENABLE_CACHING=false and no Redis")
    m.add_argument("--no-batching", action="store_true", help="serve with adaptive batching off")
    s = p.add_argument_group("SLOs (exit 1 when missed)")
    s.add_argument("--slo-p99-ms", type=float, default=None)
    s.add_argument("--slo-p95-ms", type=float, default=None)
    s.add_argument("--slo-max-error-rate", type=float, default=None, help="failures / requests, e.g. 0.001")
    s.add_argument("--slo-min-rps", type=float, default=None)
    args = p.parse_args(argv)
    if args.host and not args.model_dir:
        p.error("--host needs --model-dir (the served model's artifact directory, for its user and item ids)")
    return args


def start_stack(args: argparse.Namespace, stack: ExitStack, log=print) -> tuple[str, Path, str]:
    """Model, Redis and bento in a scratch directory; returns (url, model dir, model description)."""
    from loadtest.models import ModelSpec, build_model, store
    from loadtest.servers import start_bento
    from tests.servers import RedisServer

    work = Path(tempfile.mkdtemp(prefix="timbral-loadtest-"))
    stack.callback(shutil.rmtree, work, True)
    spec = ModelSpec(n_items=args.items, n_users=args.catalog_users, interactions=args.interactions,
                     factors=args.factors, fitted=not args.random_factors, max_iter=args.max_iter)
    log(f"loadtest: building a model ({spec.describe()})")
    tag, model_dir = store(build_model(spec, log=log), work / "bentoml", version="loadtest")
    redis_url = None
    if not args.no_cache:
        redis = RedisServer(work / "redis").start()
        stack.callback(redis.stop)
        redis_url = redis.url
    log(f"loadtest: serving {tag} (cache {'off' if args.no_cache else 'on'}, "
        f"batching {'off' if args.no_batching else 'on'})")
    server = start_bento(work / "bentoml", tag, batching=not args.no_batching, cache=not args.no_cache,
                         redis_url=redis_url, log_path=work / "serve.log")
    stack.callback(server.stop)
    return server.url, model_dir, spec.describe()


def locust_command(args: argparse.Namespace, host: str, model_dir: Path, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"), "--headless",
           "--host", host, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
           "--run-time", args.run_time, "--csv", str(out / "locust"), "--html", str(out / "report.html"),
           "--json-file", str(out / "locust"),
           "--only-summary", "--stop-timeout", "10", "--model-dir", str(model_dir),
           "--think-min", str(args.think_min), "--think-max", str(args.think_max),
           "--unknown-share", str(args.unknown_share), "--zipf", str(args.zipf)]
    if args.mix:
        cmd += ["--mix", args.mix]
    if args.processes != 1:
        cmd += ["--processes", str(args.processes)]
    return cmd


def run_locust(cmd: list[str], log_path: Path) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            sys.stdout.write(line)
        return proc.wait()


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out or REPO / "loadtest" / "results" / "runs" / datetime.now().strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    slo = Slo(args.slo_p99_ms, args.slo_p95_ms, args.slo_max_error_rate, args.slo_min_rps)
    started = time.time()
    with ExitStack() as stack:
        try:
            if args.host:
                host, model_dir, model = args.host, Path(args.model_dir), f"served at {args.host}"
            else:
                host, model_dir, model = start_stack(args, stack)
        except Exception as exc:  # noqa: BLE001 - one line, then the status the Makefile sees
            print(f"loadtest: could not start the service: {exc}", file=sys.stderr)
            return 2
        code = run_locust(locust_command(args, host, model_dir, out), out / "locust.log")
    if not (out / "locust.json").exists() and not (out / "locust_stats.csv").exists():
        print(f"loadtest: locust exited with {code} and wrote no statistics (see {out / 'locust.log'})", file=sys.stderr)
        return 2
    context = {"host": host, "model": model, "users": args.users, "spawn_rate": args.spawn_rate,
               "run_time": args.run_time, "think_s": [args.think_min, args.think_max], "mix": args.mix or "default",
               "unknown_share": args.unknown_share, "started": datetime.fromtimestamp(started).isoformat(timespec="seconds"),
               "locust_exit_code": code, "files": {"stats_csv": "locust_stats.csv", "stats_json": "locust.json", "html": "report.html",
                         "log": "locust.log"}}
    summary = summarise(out / "locust", slo, context)
    path = write_summary(summary, out / "summary.json")
    print(format_summary(summary))
    print(f"loadtest: {path}")
    return 0 if summary["slo_met"] else 1


if __name__ == "__main__":
    from training.local_stack import main_stopping_on_sigterm

    sys.exit(main_stopping_on_sigterm(main, "loadtest"))
