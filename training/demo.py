"""``timbral demo`` / ``make demo``: the whole product on one machine with embedded defaults.

Local S3 (moto) + MLflow server → synthetic listens → train, evaluate, register → import into the BentoML store
→ ``bentoml build`` → ``bentoml serve`` (with a throwaway Redis when ``redis-server`` exists) → a live
``/recommend`` answer. Every server it starts is stopped when it ends, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click

from training.local_stack import LocalStack, free_port, stop_process, wait_http

REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], env: dict[str, str], title: str) -> str:
    click.secho(f"$ {' '.join(cmd)}", fg="cyan", err=True)
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise click.ClickException(f"{title} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return proc.stdout


def _start_redis(workdir: Path):
    binary = shutil.which("redis-server")
    if binary is None:
        click.echo("redis-server not found: serving without the cache (`make setup` installs it)", err=True)
        return None, None
    port = free_port()
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=(workdir / "redis.log").open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    time.sleep(0.3)
    return proc, f"redis://127.0.0.1:{port}/0"


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (loopback)
        return json.loads(resp.read())


def run_demo(workdir: str, users: int, items: int, interactions: int, serve: bool, keep_running: bool) -> None:
    from training.generate import write_listens
    from training.pipeline import TrainConfig, run_training
    from training.progress import ConsoleReporter
    from training.report import print_result

    work = Path(workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    progress = ConsoleReporter()
    data = work / "listens.parquet"
    with progress.stage(f"Generating {interactions:,} synthetic listens"):
        write_listens(data, users, items, interactions, seed=7)

    with LocalStack(work / "stack") as stack, contextlib.ExitStack() as cleanup:
        progress.info(f"MLflow server {stack.tracking_uri} (artifacts in s3://{stack.bucket} on {stack.s3_endpoint})")
        for key, value in stack.client_env().items():
            os.environ[key] = value
        import mlflow

        mlflow.set_tracking_uri(stack.tracking_uri)
        result = run_training(TrainConfig(data=str(data), experiment="timbral-demo"), progress)
        print_result(result)
        if serve:
            _serve_and_query(stack, result, work, cleanup, progress)
        if not keep_running:
            click.echo("Run `timbral demo --keep-running` to keep the MLflow UI (and the service) up afterwards.")
        if keep_running:
            click.echo(f"\nMLflow UI: {stack.tracking_uri}  — Ctrl-C to stop everything")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)


def _serve_and_query(stack: LocalStack, result, work: Path, cleanup: contextlib.ExitStack, progress) -> None:
    env = {**os.environ, **stack.client_env()}
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    uri = f"models:/{result.model_name}@champion"
    with progress.stage(f"Importing {uri} into the BentoML store"):
        click.echo(_run([str(bin_dir / "timbral"), "import-model", "--model-uri", uri], env, "import-model").strip())
    with progress.stage("bentoml build"):
        out = _run([str(bin_dir / "bentoml"), "build", "--output", "tag"], env, "bentoml build")
    tag = out.strip().splitlines()[-1].replace("__tag__:", "").strip()
    click.echo(f"built bento {tag}")
    redis_proc, redis_url = _start_redis(work)
    cleanup.callback(stop_process, redis_proc)
    port = free_port()
    # no Redis: no cache and no rate limiter (both would look for one on the default URL)
    serve_env = {**env, "ENABLE_CACHING": "true" if redis_url else "false",
                 "RATE_LIMIT_ENABLED": "true" if redis_url else "false"}
    if redis_url:
        serve_env["REDIS_URL"] = redis_url
    log = (work / "bentoml-serve.log").open("ab")
    proc = subprocess.Popen([str(bin_dir / "bentoml"), "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
                            env=serve_env, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cleanup.callback(stop_process, proc)
    with progress.stage(f"bentoml serve {tag} on port {port}"):
        wait_http(f"http://127.0.0.1:{port}/readyz", 180, proc, work / "bentoml-serve.log")
    base = f"http://127.0.0.1:{port}"
    body = {"user_id": result.sample_user, "k": 5}
    click.echo(f"\ncurl -s -X POST {base}/recommend -H 'Content-Type: application/json' -d '{json.dumps(body)}'")
    for attempt in ("first call", "same call again"):
        answer = _post(f"{base}/recommend", body)
        items = ", ".join(f"{i['item_id']} ({i['score']:.3f})" for i in answer["items"])
        click.echo(f"  {attempt}: strategy={answer['strategy']} model_version={answer['model_version']} "
                   f"cached={str(answer['cached']).lower()} items: {items}")
    click.echo(f"\nThe service (Swagger UI at {base}/) stops with the demo; logs are in {work}.")
