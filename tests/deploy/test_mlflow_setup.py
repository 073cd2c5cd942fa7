"""The MLflow tracking-server setup in mlflow/: start-server.sh (static checks, and really started on
loopback with a sqlite backend, and on the local PostgreSQL when there is one), the Dockerfile, the README."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.deploy._helpers import ROOT

MLFLOW_DIR = ROOT / "mlflow"
SCRIPT = MLFLOW_DIR / "start-server.sh"
VENV_BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- static checks

def test_mlflow_dir_is_not_an_importable_package():
    # a package or module named mlflow here would shadow the real mlflow for anything run from the root
    assert not (MLFLOW_DIR / "__init__.py").exists()
    assert not list(MLFLOW_DIR.rglob("*.py")), "no Python files in mlflow/"
    assert not (ROOT / "mlflow.py").exists()


def test_script_parses_with_bash():
    assert os.access(SCRIPT, os.X_OK), "start-server.sh must be executable"
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
def test_script_passes_shellcheck():
    result = subprocess.run(["shellcheck", "--severity=style", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_script_sanity():
    text = SCRIPT.read_text()
    lines = text.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -Eeuo pipefail" in text
    # the server replaces the shell: signals reach it directly
    assert re.search(r'^exec "\$mlflow_bin" "\$\{args\[@\]\}"$', text, re.M)
    assert "db upgrade" in text
    for flag in ("--backend-store-uri", "--artifacts-destination", "--host", "--port", "--workers", "--allowed-hosts"):
        assert flag in text
    # every variable the script reads is documented in its header, and vice versa
    used = set(re.findall(r"\$\{(MLFLOW_[A-Z_]+):-", text))
    header = "\n".join(line for line in lines if line.startswith("#"))
    documented = set(re.findall(r"^#\s+(MLFLOW_[A-Z_]+)\s", header, re.M))
    assert used == documented, (used ^ documented)
    assert {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_HOST", "MLFLOW_PORT",
            "MLFLOW_ALLOWED_HOSTS", "MLFLOW_WORKERS"} <= used
    assert "sqlite:///mlflow.db" in text and "s3://timbral-artifacts/mlflow" in text
    # unquoted expansions of the variables would split on spaces
    for line in lines:
        if not line.lstrip().startswith("#"):
            assert not re.search(r"[^\"'=\w]\$(backend_store_uri|artifacts_destination|allowed_hosts)\b", line), line


@pytest.mark.parametrize(("env", "message"), [
    ({"MLFLOW_PORT": "fivethousand"}, "MLFLOW_PORT"),
    ({"MLFLOW_WORKERS": "0"}, "MLFLOW_WORKERS"),
    ({"MLFLOW_DB_UPGRADE": "maybe"}, "MLFLOW_DB_UPGRADE"),
    ({"MLFLOW_BIN": "no-such-mlflow-binary"}, "not found"),
])
def test_script_rejects_bad_settings(tmp_path, env, message):
    result = subprocess.run(["bash", str(SCRIPT)], env={**_base_env(), **env}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 64 and message in result.stderr


def test_dockerfile_builds_the_server_image():
    dockerfile = (MLFLOW_DIR / "Dockerfile").read_text()
    requirements = (MLFLOW_DIR / "requirements.txt").read_text()
    pins = dict(re.findall(r"^([\w-]+)==(\S+)$", requirements, re.M))
    assert {"mlflow", "psycopg2-binary", "boto3"} <= set(pins)
    assert "requirements.txt" in dockerfile
    assert re.search(r"^USER 10001", dockerfile, re.M), "the image runs as a non-root user"
    assert "start-server.sh" in dockerfile and "ENTRYPOINT" in dockerfile
    assert "EXPOSE 5000" in dockerfile


def test_readme_covers_the_setup():
    readme = (MLFLOW_DIR / "README.md").read_text()
    for needle in ("sqlite", "PostgreSQL", "s3://", "MinIO", "MLFLOW_S3_ENDPOINT_URL", "--allowed-hosts",
                   "k8s/compose", "docker build", "start-server.sh"):
        assert needle in readme, needle


# ---------------------------------------------------------------- really running it

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _get(url: str, host: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (loopback)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def running_server(tmp_path: Path, backend_store_uri: str):
    port = _free_port()
    env = {
        **_base_env(),
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri,
        "MLFLOW_ARTIFACTS_DESTINATION": (tmp_path / "artifacts").as_uri(),
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
        "MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}",
    }
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", str(SCRIPT)], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    pgid = proc.pid  # a new session: the group id is the script's pid (kept by the exec'd mlflow)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"start-server.sh exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if _get(f"http://127.0.0.1:{port}/health")[0] == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"no /health answer within 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield port, proc, log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(10)
        deadline = time.monotonic() + 15
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            pytest.fail("processes of the server's group were still running 15 s after SIGTERM")


def _check_server(port: int) -> None:
    status, body = _get(f"http://127.0.0.1:{port}/health")
    assert (status, body.strip()) == (200, "OK")
    search = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=5"
    status, body = _get(search)
    assert status == 200 and "Default" in body
    # --allowed-hosts reached the server: other Host headers are refused, /health is always answered
    assert _get(search, host="evil.example")[0] == 403
    assert _get(f"http://127.0.0.1:{port}/health", host="evil.example")[0] == 200


def test_start_server_with_sqlite_and_local_artifacts(tmp_path):
    db = tmp_path / "mlflow.db"
    with running_server(tmp_path, f"sqlite:///{db}") as (port, proc, log):
        _check_server(port)
        assert proc.poll() is None
        # the script's default keeps MLflow's job runner (launched with the server) off
        commands = " ".join(" ".join(c.cmdline()) for c in psutil.Process(proc.pid).children(recursive=True))
        assert "uvicorn" in commands and "_job_runner" not in commands and "huey" not in commands, commands
    text = log.read_text()
    assert "mlflow db upgrade" in text
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("select name from sqlite_master where type = 'table'")}
    assert {"alembic_version", "experiments", "runs"} <= tables
    # stopped by SIGTERM, gracefully (exit code of the server, not a SIGKILL)
    assert proc.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM), proc.returncode


@pytest.mark.postgres
def test_start_server_with_postgresql(tmp_path, postgres_db):
    with running_server(tmp_path, postgres_db.url) as (port, _proc, log):
        _check_server(port)
    assert "mlflow db upgrade postgresql://" in log.read_text()
