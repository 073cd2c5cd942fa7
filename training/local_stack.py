"""The embedded default stack for the demo and the tests: a moto S3 server and an ``mlflow server`` on loopback.

``LocalStack`` starts both as subprocesses on free ports (moto first, then the bucket, then MLflow with an
``s3://`` artifact destination it proxies), waits until each answers, and stops both on exit — also when the
caller fails half way, so nothing is left running by accident.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BUCKET = "timbral-artifacts"
LOCAL_AWS = {"AWS_ACCESS_KEY_ID": "timbral-local", "AWS_SECRET_ACCESS_KEY": "timbral-local", "AWS_DEFAULT_REGION": "us-east-1"}


class StackError(RuntimeError):
    """A local server did not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise StackError(f"{url}: server exited with code {proc.returncode} before answering\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback only)
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return
            last = str(exc)
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise StackError(f"{url}: no answer within {timeout:.0f}s ({last})")


class Terminated(BaseException):
    """SIGTERM raised as an exception by :func:`sigterm_unwinds`. A BaseException, so no ``except Exception``
    swallows it."""


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise Terminated()


@contextlib.contextmanager
def sigterm_unwinds():
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread, like Ctrl-C's KeyboardInterrupt:
    ``with`` blocks unwind and stop the servers they started, where the default action would kill this process
    and leave its children running. The previous handler comes back afterwards. Off the main thread, a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def main_stopping_on_sigterm(main: Callable[[], int], name: str) -> int:
    """``main()``'s exit code; on SIGTERM, 143 once its ``with`` blocks have stopped what they started."""
    try:
        with sigterm_unwinds():
            return main()
    except Terminated:
        print(f"{name}: terminated", file=sys.stderr)
        return 143


def stop_process(proc: subprocess.Popen | None, grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Stop ``proc`` (started with ``start_new_session``) and every process under it.

    ``bentoml serve`` is a supervisor whose worker processes call ``setsid()``: signalling its process group
    misses them, and once the supervisor is gone they are orphans nobody finds by parent. So the tree is
    listed first; ``sig`` goes to the leader's group; what is still alive after ``grace`` seconds (or at once,
    for SIGKILL) gets SIGKILL. psutil refuses to signal a pid that was reused meanwhile.
    """
    import psutil

    if proc is None or getattr(proc, "tree_stopped", False):
        return
    try:
        leader = psutil.Process(proc.pid)
        tree = [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    if sig == signal.SIGKILL:  # a crash: the supervisor first (it would respawn workers), then the rest
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    try:
        proc.wait(grace if sig != signal.SIGKILL else 10)
    except subprocess.TimeoutExpired:
        pass
    _, alive = psutil.wait_procs(tree, timeout=0 if proc.poll() is None else min(grace, 5.0))
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    if proc.poll() is None:
        proc.wait(5)
    proc.tree_stopped = True


def _bin(name: str) -> str:
    """A console script of this environment (the venv's bin/ need not be on PATH)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise StackError(f"'{name}' not found next to {sys.executable} or on PATH; run `make setup`")
    return found


def start_moto(port: int, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    wait_http(f"http://127.0.0.1:{port}/moto-api/", 60, proc, log)
    return proc


def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID", LOCAL_AWS["AWS_ACCESS_KEY_ID"]),
        "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY", LOCAL_AWS["AWS_SECRET_ACCESS_KEY"]),
        "region_name": os.environ.get("AWS_DEFAULT_REGION", LOCAL_AWS["AWS_DEFAULT_REGION"]),
    }


def start_mlflow(
    port: int,
    backend_store_uri: str,
    artifacts_destination: str,
    s3_endpoint: str | None,
    log: Path,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen:
    env = {**os.environ, **LOCAL_AWS, **(extra_env or {})}
    if s3_endpoint:
        env["MLFLOW_S3_ENDPOINT_URL"] = s3_endpoint
    # no GenAI job runner: it is eight more Python processes (huey consumers), and Timbral only tracks runs and
    # registers models (the Kubernetes and compose setups say the same)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # the server's own python must find uvicorn & co.: put this venv's bin first
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            _bin("mlflow"), "server",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", backend_store_uri,
            "--artifacts-destination", artifacts_destination,
        ],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    wait_http(f"http://127.0.0.1:{port}/health", 120, proc, log)
    return proc


@dataclass
class LocalStack:
    """moto S3 + mlflow server on loopback. Use as a context manager."""

    workdir: Path
    bucket: str = DEFAULT_BUCKET
    backend_store_uri: str | None = None  # default: sqlite file in workdir
    s3_port: int = 0
    mlflow_port: int = 0
    _procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def artifacts_destination(self) -> str:
        return f"s3://{self.bucket}/mlflow"

    def client_env(self) -> dict[str, str]:
        """Environment a client process needs: tracking URI and S3 credentials/endpoint for direct reads."""
        return {**LOCAL_AWS, "MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint}

    def start(self) -> LocalStack:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.s3_port = self.s3_port or free_port()
            self._procs.append(start_moto(self.s3_port, self.workdir / "moto.log"))
            with environ(LOCAL_AWS, override=False):
                create_bucket(self.s3_endpoint, self.bucket)
            self.mlflow_port = self.mlflow_port or free_port()
            backend = self.backend_store_uri
            if backend is None:
                # moto keeps S3 in memory, so a registry left from an earlier stack would point at artifacts
                # that no longer exist: the default sqlite registry always starts fresh with the bucket
                db = (self.workdir / "mlflow.db").resolve()
                db.unlink(missing_ok=True)
                backend = f"sqlite:///{db}"
            self._procs.append(
                start_mlflow(self.mlflow_port, backend, self.artifacts_destination, self.s3_endpoint, self.workdir / "mlflow.log")
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in reversed(self._procs):
            stop_process(proc)
        self._procs.clear()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def environ(values: dict[str, str], override: bool = True):
    """Set environment variables for a block and restore the previous values afterwards.

    With ``override=False`` a variable that is already set keeps its value (``values`` are defaults).
    """
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values if override else {k: os.environ.get(k) or v for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
