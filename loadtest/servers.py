"""The servers a load test or benchmark needs, each a subprocess on a free loopback port, stopped afterwards.

* the bento: ``bentoml serve`` (production mode) through ``tests.e2e.helpers.BentoServer``, with batching on
  (``MAX_BATCH_SIZE``, default 64) or off (max_batch_size = 1), the cache on or off;
* a throwaway ``redis-server`` (``tests.servers.RedisServer``);
* the peer: ``mlflow models serve`` of the same model, logged and registered in a local MLflow (moto S3 +
  ``mlflow server``, ``training.local_stack.LocalStack``).

"Batching off" is the same bento with ``MAX_BATCH_SIZE=1``: one request per model call, no coalescing in the API
and no adaptive batching in the model service.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.helpers import BentoServer
from training.local_stack import LocalStack, environ, free_port, stop_process, wait_http

BLAS_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def serve_env(tag: str, *, redis_url: str = "redis://127.0.0.1:1/0", cache: bool = False, **extra: str) -> dict[str, str]:
    """The bento's settings for load tests. Two depart from the service defaults, on purpose:

    * ``RATE_LIMIT_ENABLED=false``: every simulated client comes from 127.0.0.1, so the per-client limit
      (100/minute) would answer 429 to nearly everything; the limiter is not what these tests measure;
    * ``REDIS_TIMEOUT_MS=250`` (default 50): on a busy 2-core machine a descheduled API process misses 50 ms,
      and each miss turns the cache off for a back-off second — the cache rows would measure the back-off.
    """
    env = {"MODEL_TAG": tag, "REDIS_URL": redis_url, "ENABLE_CACHING": "true" if cache else "false",
           "CACHE_TTL": "600", "REDIS_TIMEOUT_MS": "250", "RATE_LIMIT_ENABLED": "false", "MAX_BATCH_SIZE": "64",
           "MAX_LATENCY_MS": "1000", "LOG_LEVEL": "WARNING", "BLAS_THREADS": "1", **BLAS_ENV}
    env.update(extra)
    return env


def batching_off() -> tuple[str, dict[str, str], str]:
    """``(serve target, env, note)`` for the bento with batching off (one request per model call)."""
    return ("service:Timbral", {"MAX_BATCH_SIZE": "1"},
            "MAX_BATCH_SIZE=1: the model's row APIs not batchable, and the API does not coalesce")


def start_bento(bentoml_home: Path, tag: str, *, batching: bool = True, cache: bool = False,
                redis_url: str | None = None, log_path: Path | None = None, extra_env: dict[str, str] | None = None,
                timeout: float = 300.0) -> BentoServer:
    target, env = "service:Timbral", serve_env(tag, redis_url=redis_url or "redis://127.0.0.1:1/0", cache=cache)
    if not batching:
        target, off_env, _ = batching_off()
        env.update(off_env)
    env.update(extra_env or {})
    return BentoServer(target, bentoml_home, env=env, log_path=log_path).start(timeout=timeout)


def server_pids(root_pid: int) -> dict[str, list[int]]:
    """The server's processes by role: a bento's ``api`` and ``model`` workers; anything else is ``server``."""
    import psutil

    roles: dict[str, list[int]] = {}
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return roles
    for p in procs:
        try:
            cmd = " ".join(p.cmdline())
        except psutil.NoSuchProcess:
            continue
        role = ("model" if "--service-name TimbralModel" in cmd else
                "api" if "--service-name Timbral" in cmd else "server")
        roles.setdefault(role, []).append(p.pid)
    return roles


@dataclass
class MlflowServe:
    """``mlflow models serve -m <uri> --env-manager local`` against a tracking server (env from LocalStack)."""

    model_uri: str
    client_env: dict[str, str]
    workdir: Path
    workers: int = 1
    port: int = 0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300.0) -> MlflowServe:
        self.port = self.port or free_port()
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, **self.client_env, **BLAS_ENV,
               "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}  # it starts `uvicorn` by name
        self.log_path = self.log_path or self.workdir / f"mlflow-serve-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(bin_dir / "mlflow"), "models", "serve", "-m", self.model_uri, "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)],
            stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
            cwd=self.workdir,
        )
        try:
            wait_http(f"{self.url}/health", timeout, self.proc, self.log_path)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> MlflowServe:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class Registered:
    model_uri: str
    client_env: dict[str, str] = field(default_factory=dict)


def register_in_mlflow(model, stack: LocalStack, name: str = "timbral-nmf") -> Registered:
    """Log ``model`` (already fitted: the same object the bento serves) as the project's pyfunc and register it."""
    import mlflow

    from training import tracking

    env = stack.client_env()
    with environ(env):
        mlflow.set_tracking_uri(stack.tracking_uri)
        mlflow.set_experiment("loadtest")
        with mlflow.start_run(run_name="loadtest-peer"), tempfile.TemporaryDirectory() as tmp:
            artifact_dir = model.save(Path(tmp) / "timbral")
            info = tracking.log_pyfunc(model, artifact_dir, name)
    return Registered(f"models:/{name}/{info.registered_model_version}", env)


