#!/usr/bin/env python3
"""``make lb-demo``: nginx on loopback, with the project's own config, in front of N ``bentoml serve`` replicas.

What runs (every process on 127.0.0.1, free ports, each in its own process group, all stopped at the end):

* a throwaway ``redis-server`` shared by the replicas (without ``redis-server`` they serve uncached);
* N replicas, each ``bentoml serve`` in production mode (API process + model-service process) with its own
  ``BENTOML_HOME`` (BentoML wipes the Prometheus directory of its home at start, so replicas cannot share one);
  the homes link to one model store. The target is the source service ``service:Timbral`` with a small model
  fitted on synthetic listens into a throwaway store (default), a model of an existing store
  (``--bentoml-home DIR --model-tag TAG``), or a built bento (``--bento timbral:<version>``);
* nginx (Debian's package) with ``k8s/compose/nginx/timbral.conf.template`` rendered by ``render_conf.py``
  for the replicas' addresses (the file compose mounts; only the listen address and upstreams differ), run as
  ``nginx -p PREFIX -c PREFIX/nginx.conf`` -- as ``nobody`` when started as root.

It waits until ``/readyz`` answers 200 through nginx, prints the URL and a curl example, and runs until Ctrl-C,
SIGTERM or ``--duration`` seconds. Its access log (``upstream=`` names the replica, two addresses when nginx
retried) is summarised at the end. ``LoadBalancedStack`` is what ``tests/e2e/test_lb_failover.py`` drives.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: the project's packages (training, service, timbral)
    sys.path.insert(0, str(REPO))

from training.local_stack import free_port, stop_process  # noqa: E402

NGINX_DIR = REPO / "k8s" / "compose" / "nginx"
NOBODY = 65534
SOURCE_SERVICE = "service:Timbral"


class LBError(RuntimeError):
    """A server of the stack did not start."""


def render_conf() -> ModuleType:
    """``k8s/compose/nginx/render_conf.py`` (a standalone script, not a package) as a module."""
    name = "timbral_render_nginx_conf"  # the name tests/deploy loads it under: one module object per process
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, NGINX_DIR / "render_conf.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of a GET, or None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback only)
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------ the model
def sample_model(home: Path, n_users: int = 400, n_items: int = 300, n_interactions: int = 20_000,
                 seed: int = 7) -> tuple[str, list]:
    """Fit a small NMF model on synthetic listens into the BentoML store under ``home``.

    Returns the store tag and the user ids the model knows (integers), for requests that get personal answers.
    Labelled like ``service.importer`` labels registry imports (registry version "1").
    """
    import bentoml
    import pandas as pd
    from bentoml._internal.models import ModelStore

    from service.catalog import LABEL_ALIAS, LABEL_REGISTRY_NAME, LABEL_REGISTRY_VERSION, LABEL_RUN_ID
    from timbral.interactions import Interactions
    from timbral.nmf import NMFRecommender
    from training.generate import generate_listens

    listens = pd.concat(list(generate_listens(n_users, n_items, n_interactions, seed=seed)), ignore_index=True)
    data = Interactions.from_arrays(listens["user_id"].to_numpy(), listens["item_id"].to_numpy(),
                                    listens["value"].to_numpy())
    model = NMFRecommender(n_components=16, max_iter=60, random_state=seed).fit(data)
    model.metadata.update({"model_name": "timbral-nmf", "run_id": "lb-demo", "data_digest": f"synthetic-{seed}",
                           "trained_at": "2024-01-01T00:00:00+00:00"})
    store = ModelStore(Path(home) / "models")
    labels = {LABEL_REGISTRY_NAME: "timbral-nmf", LABEL_REGISTRY_VERSION: "1", LABEL_ALIAS: "champion",
              LABEL_RUN_ID: "lb-demo"}
    with bentoml.models.create("timbral-nmf", labels=labels, metadata={"source": "k8s/compose/lb_demo.py"},
                               _model_store=store) as stored:
        model.save(stored.path)
    return str(stored.tag), model.users.externals(range(len(model.users)))


# ------------------------------------------------------------------------------------------------ servers
@dataclass
class Redis:
    workdir: Path
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> Redis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise LBError("redis-server is not installed (`make setup` installs it)")
        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--daemonize", "no"],
            stdout=(self.workdir / "redis.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return self
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise LBError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc, grace=5)


@dataclass
class Replica:
    """``bentoml serve TARGET`` on a fixed loopback port: ``start()``, ``crash()`` (SIGKILL), ``stop()``."""

    name: str
    target: str
    home: Path
    port: int
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "serve.log"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 180.0) -> Replica:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BENTOML_", "PROMETHEUS_"))}
        env.update({"BENTOML_HOME": str(self.home), "BENTOML_DO_NOT_TRACK": "true", "OPENBLAS_NUM_THREADS": "1",
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        env.update(self.env)
        bentoml_bin = Path(sys.executable).parent / "bentoml"
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1}: {self.target} on {self.address}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [str(bentoml_bin) if bentoml_bin.exists() else "bentoml", "serve", self.target,
                 "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while http_status(f"{self.url}/readyz") != 200:  # 503 until the model is loaded
            if self.proc.poll() is not None or time.monotonic() > deadline:
                code = self.proc.poll()
                self.stop()
                raise LBError(f"{self.name}: bentoml serve {'exited with ' + str(code) if code is not None else 'not ready'}"
                              f" (log {self.log_path}):\n{self.log_tail()}")
            time.sleep(0.3)
        return self

    def pids(self) -> list[int]:
        """The supervisor and its workers (each worker runs in a session of its own)."""
        import psutil

        try:
            leader = psutil.Process(self.proc.pid)
            return [leader.pid, *(p.pid for p in leader.children(recursive=True))]
        except (psutil.NoSuchProcess, AttributeError):
            return []

    def crash(self) -> None:
        """SIGKILL to the whole process group (supervisor, API and model-service processes): a crash."""
        if self.proc is not None:
            stop_process(self.proc, sig=signal.SIGKILL)

    def stop(self, grace: float = 15.0) -> None:
        stop_process(self.proc, grace, sig=signal.SIGTERM)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@dataclass
class Nginx:
    """nginx with the rendered project config under its own prefix; unprivileged (``nobody``) when root."""

    upstreams: list[str]
    port: int = 0
    binary: str | None = None
    prefix: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def start(self, timeout: float = 20.0) -> Nginx:
        self.binary = self.binary or find_nginx()
        if self.binary is None:
            raise LBError("nginx is not installed (apt-get install nginx; `make system-deps`)")
        self.port = self.port or free_port()
        # its own directory under the system temp dir: reachable by `nobody` (a pytest tmp_path is not)
        self.prefix = Path(tempfile.mkdtemp(prefix="timbral-lb-nginx-"))
        conf = render_conf()
        self.conf.write_text(conf.render(f"127.0.0.1:{self.port}", self.upstreams))
        check = conf.nginx_check(self.conf, self.prefix, self.binary)
        if check.returncode != 0:
            raise LBError(f"nginx -t failed:\n{check.stderr}")
        user: list[str] = []
        if os.geteuid() == 0 and shutil.which("setpriv"):
            user = [shutil.which("setpriv"), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        self.access_log.touch()
        self.error_log.touch()
        if user:
            for path in (self.prefix, *self.prefix.iterdir()):
                os.chown(path, NOBODY, NOBODY)  # nginx writes its pid/temp files here and reopens /dev/stdout
        self.prefix.chmod(0o755)
        with self.access_log.open("ab") as out, self.error_log.open("ab") as err:
            self.proc = subprocess.Popen(
                [*user, self.binary, "-e", "stderr", "-p", f"{self.prefix}/", "-c", str(self.conf), "-g", "daemon off;"],
                stdout=out, stderr=err, start_new_session=True)
        deadline = time.monotonic() + timeout
        while http_status(f"{self.url}/readyz") is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise LBError(f"nginx did not start:\n{self.error_log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        stop_process(self.proc, grace=10, sig=signal.SIGQUIT)  # graceful: master and workers finish and exit

    def cleanup(self) -> None:
        if self.prefix is not None:
            shutil.rmtree(self.prefix, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ access log
ACCESS_LINE = re.compile(r'"(?P<request>[^"]*)" (?P<status>\d{3}) .*? upstream=(?P<upstream>.*?) rid=(?P<rid>\S+)$')


@dataclass(frozen=True)
class LogEntry:
    request: str
    status: int
    upstreams: tuple[str, ...]  # every replica nginx tried, in order ("-" when none was)
    rid: str

    @property
    def served_by(self) -> str:
        return self.upstreams[-1]

    @property
    def retried(self) -> bool:
        return len(self.upstreams) > 1


def read_access_log(path: Path, start: int = 0) -> list[LogEntry]:
    """The lines of the project's ``timbral`` log format from byte ``start`` on, in order (others are skipped)."""
    with path.open("rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    entries = []
    for line in text.splitlines():
        match = ACCESS_LINE.search(line)
        if match:
            ups = tuple(u.strip() for u in re.split(r"\s*[,:]\s+", match["upstream"]) if u.strip())
            entries.append(LogEntry(match["request"], int(match["status"]), ups, match["rid"]))
    return entries


# ------------------------------------------------------------------------------------------------ the stack
@dataclass
class LoadBalancedStack:
    """Redis + ``replicas`` × ``bentoml serve`` + nginx; a context manager that stops everything it started."""

    replicas: int = 2
    bento: str | None = None  # a built bento tag in ``bentoml_home``; else the source service
    bentoml_home: Path | None = None  # an existing store; else a throwaway one with a sample model
    model_tag: str | None = None
    listen_port: int = 0
    workdir: Path | None = None
    redis: bool = True
    env: dict[str, str] = field(default_factory=dict)
    quiet: bool = False

    def __post_init__(self) -> None:
        self.servers: list[Replica] = []
        self.nginx: Nginx | None = None
        self.redis_server: Redis | None = None
        self.users: list = []
        self._own_workdir = self.workdir is None

    @property
    def url(self) -> str:
        return self.nginx.url

    def _say(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def _store(self) -> tuple[Path, str]:
        """The BentoML home the replicas read models (and bentos) from, and the model tag to serve."""
        if self.bentoml_home is not None:
            return Path(self.bentoml_home).resolve(), self.model_tag or "timbral-nmf:latest"
        home = self.workdir / "store"
        self._say("fitting a small model on synthetic listens into a throwaway store ...")
        tag, self.users = sample_model(home)
        return home, tag

    def start(self) -> LoadBalancedStack:
        if self.replicas < 1:
            raise ValueError("at least one replica")
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="timbral-lb-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            store, tag = self._store()
            # nginx is the trusted proxy: the rate limiter keys on the address it adds to X-Forwarded-For
            env = {"MODEL_TAG": tag, "LOG_LEVEL": "WARNING", "BLAS_THREADS": "1", "TRUST_FORWARDED_FOR": "true",
                   **self.env}
            if self.redis and shutil.which("redis-server"):
                self.redis_server = Redis(self.workdir / "redis").start()
                env.setdefault("REDIS_URL", self.redis_server.url)
            else:
                env.setdefault("ENABLE_CACHING", "false")
            for n in range(1, self.replicas + 1):
                home = self.workdir / f"replica-{n}"
                home.mkdir(exist_ok=True)
                for sub in ("models", "bentos"):  # one store, one BENTOML_HOME (Prometheus dir) per replica
                    (store / sub).mkdir(parents=True, exist_ok=True)
                    link = home / sub
                    if not link.exists():
                        link.symlink_to(store / sub, target_is_directory=True)
                self.servers.append(Replica(f"replica-{n}", self.bento or SOURCE_SERVICE, home, free_port(), env))
            self._say(f"starting {self.replicas} × bentoml serve {self.bento or SOURCE_SERVICE} "
                      f"on {', '.join(r.address for r in self.servers)} ...")
            self._start_all(self.servers)
            self.nginx = Nginx([r.address for r in self.servers], port=self.listen_port).start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_all(self, servers: list[Replica]) -> None:
        """Start replicas in parallel (each start waits for its /readyz); the first failure is raised."""
        errors: list[BaseException] = []

        def run(replica: Replica) -> None:
            try:
                replica.start()
            except BaseException as exc:  # noqa: BLE001 (re-raised below)
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(r,), daemon=True) for r in servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while http_status(f"{self.url}/readyz") != 200:
            if time.monotonic() > deadline:
                raise LBError(f"{self.url}/readyz did not answer 200 through nginx within {timeout:.0f}s")
            time.sleep(0.2)

    def crash(self, index: int) -> Replica:
        replica = self.servers[index]
        replica.crash()
        return replica

    def restart(self, index: int, timeout: float = 180.0) -> Replica:
        """Start replica ``index`` again on the same port; returns once it answers /readyz itself."""
        replica = self.servers[index]
        replica.stop()
        return replica.start(timeout)

    def per_replica(self, entries: list[LogEntry] | None = None) -> Counter:
        entries = read_access_log(self.nginx.access_log) if entries is None else entries
        return Counter(e.served_by for e in entries)

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for replica in self.servers:
            replica.stop()
        if self.redis_server is not None:
            self.redis_server.stop()
        if self.nginx is not None:
            self.nginx.cleanup()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LoadBalancedStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------ CLI
def _on_sigterm(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=2, help="number of bentoml serve replicas (default 2)")
    parser.add_argument("--port", type=int, default=0, help="nginx's loopback port (default: a free one)")
    parser.add_argument("--bento", help="serve this built bento (e.g. timbral:<version>) from --bentoml-home")
    parser.add_argument("--bentoml-home", type=Path,
                        help="an existing BentoML home (models, bentos); default: a throwaway store with a small model")
    parser.add_argument("--model-tag", help="the store model to serve from --bentoml-home (default timbral-nmf:latest)")
    parser.add_argument("--no-redis", action="store_true", help="serve without Redis (no cache, no rate limit)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the replicas, e.g. RATE_LIMIT_ENABLED=false (repeatable)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (default: Ctrl-C)")
    parser.add_argument("--workdir", type=Path, help="keep logs and homes here (default: a temp dir, removed at the end)")
    args = parser.parse_args(argv)
    if args.bento and not args.bentoml_home:
        parser.error("--bento needs --bentoml-home (the BentoML home that holds the bento)")

    env = dict(item.split("=", 1) for item in args.env if "=" in item)
    if len(env) != len(args.env):
        parser.error("--env takes NAME=VALUE")

    signal.signal(signal.SIGTERM, _on_sigterm)
    stack = LoadBalancedStack(replicas=args.replicas, bento=args.bento, bentoml_home=args.bentoml_home,
                              model_tag=args.model_tag, listen_port=args.port, workdir=args.workdir,
                              redis=not args.no_redis, env=env)
    try:
        stack.start()
        user = stack.users[0] if stack.users else 1
        body = json.dumps({"user_id": user, "k": 5})
        print(f"\nTimbral behind nginx: {stack.url}  (config {stack.nginx.conf})", flush=True)
        for r in stack.servers:
            print(f"  {r.name}: {r.url}  pid {r.proc.pid}  log {r.log_path}")
        print(f"  access log: {stack.nginx.access_log}")
        print(f"\n  curl -s -X POST {stack.url}/recommend -H 'Content-Type: application/json' -d '{body}'")
        print(f"  curl -s {stack.url}/health")
        print(f"  crash {stack.servers[-1].name}: kill -KILL {' '.join(map(str, stack.servers[-1].pids()))}"
              "  (nginx retries its requests on the others)\n")
        print(f"running {f'for {args.duration:.0f} s' if args.duration else 'until Ctrl-C'} ...", flush=True)
        deadline = time.monotonic() + args.duration if args.duration > 0 else None
        reported: set[str] = set()
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
            for r in stack.servers:
                if not r.running() and r.name not in reported:
                    reported.add(r.name)
                    print(f"{r.name} ({r.address}) exited; nginx sends its traffic to the others", flush=True)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
    except LBError as exc:
        print(f"lb-demo: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if stack.nginx is not None and stack.nginx.prefix is not None and stack.nginx.access_log.exists():
            entries = read_access_log(stack.nginx.access_log)
            if entries:
                counts = ", ".join(f"{k}: {v}" for k, v in sorted(stack.per_replica(entries).items()))
                print(f"{len(entries)} requests through nginx ({sum(e.retried for e in entries)} retried); "
                      f"served by {counts}")
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
