"""The bento's real OCI image, built with buildah on the local Debian base and run with its own entrypoint.

``k8s/image/build.py`` builds a bento of a small model from a throwaway BENTOML_HOME and containerizes it with
``bentoml containerize --backend buildah`` (base image from ``k8s/image/base.sh``, built once and cached). The image
then runs as in the Kubernetes Deployment: its ENTRYPOINT, its user (uid 1034), a read-only root filesystem with
only /tmp writable, BENTOML_HOME=/tmp/bentoml and no Redis; the test probes ``/readyz`` and ``POST /recommend``
from the host. Working containers are removed afterwards; the base and the layer cache stay (the image of this
run's bento is kept only as ``timbral-e2e:layer-cache``, replacing the previous run's).

Needs root, buildah and debootstrap: installed with apt-get when missing; skipped only when that is impossible.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from tests.e2e.helpers import REPO
from training.local_stack import free_port

BENTO_UID = 1034
READY_TIMEOUT = 180.0
CACHE_TAG = "localhost/timbral-e2e:layer-cache"
API_WORKERS = Settings.model_fields["api_workers"].default  # the container sets no API_WORKERS


def ensure_tools() -> None:
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{' and '.join(missing)} missing and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "buildah", "debootstrap"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.skip(f"cannot install buildah/debootstrap with apt-get: {proc.stderr.strip()[-500:]}")


def buildah(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    driver = os.environ.get("BUILDAH_STORAGE_DRIVER")
    cmd = ["buildah", *(["--storage-driver", driver] if driver else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout,
                          env={**os.environ, "BUILDAH_ISOLATION": "chroot"})


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (the server's workers start their own sessions, so not its group)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise ValueError(pid)


@pytest.fixture(scope="module")
def built_image(bentoml_home, model_tag, tmp_path_factory):
    ensure_tools()
    if os.geteuid() != 0:
        pytest.skip("buildah (chroot isolation) and debootstrap need root")
    log = tmp_path_factory.mktemp("image") / "build.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENTOML_")}
    env.update(BENTOML_HOME=str(bentoml_home), BENTOML_DO_NOT_TRACK="true")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "k8s" / "image" / "build.py"), "--model-tag", model_tag,
                           "--log", str(log), "--json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["total_seconds"] = round(time.monotonic() - start, 1)
    print(f"\nimage build: {json.dumps(summary)}")
    yield summary
    # Keep this image under CACHE_TAG (its intermediate images are the layer cache of the next build: removing
    # it would remove them too) and drop this bento's tag and the previously kept image (only its own layers go).
    previous = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", CACHE_TAG, check=False)
    buildah("tag", summary["image"], CACHE_TAG, check=False)
    buildah("rmi", summary["image"], check=False)  # removes the name only: the image keeps CACHE_TAG
    current = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", CACHE_TAG, check=False)
    if previous.returncode == 0 and previous.stdout.strip() != current.stdout.strip():
        buildah("rmi", previous.stdout.strip(), check=False)


class Container:
    """A working container of ``image`` running its ENTRYPOINT+CMD like a pod: read-only root, writable /tmp."""

    def __init__(self, image: str, tmp: Path, env: dict[str, str]) -> None:
        self.image, self.tmp, self.env = image, tmp, env
        self.port = free_port()
        self.log = tmp / "container.log"
        self.name = f"timbral-e2e-{os.getpid()}-{self.port}"
        self.root = ""
        self.ro_bound = False
        self.proc: subprocess.Popen | None = None
        self.seen: list[int] = []  # every process that ran below buildah run

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict:
        return json.loads(buildah("inspect", "--type", "image", self.image).stdout)["OCIv1"]["config"]

    def start(self) -> Container:
        config = self.config()
        command = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
        assert command, config
        buildah("from", "--name", self.name, self.image)
        self.root = buildah("mount", self.name).stdout.strip()
        # readOnlyRootFilesystem: bind the container's root read-only onto itself (buildah run creates the
        # /run/.containerenv mount point, so it must exist first); /tmp is a host directory, like the emptyDir
        Path(self.root, "run", ".containerenv").touch()
        subprocess.run(["mount", "--bind", self.root, self.root], check=True)
        self.ro_bound = True
        subprocess.run(["mount", "-o", "remount,bind,ro", self.root], check=True)
        container_tmp = self.tmp / "container-tmp"
        container_tmp.mkdir()
        container_tmp.chmod(0o1777)
        envs = [f"--env={key}={value}" for key, value in {**self.env, "BENTOML_PORT": str(self.port)}.items()]
        self.proc = subprocess.Popen(
            ["buildah", *(["--storage-driver", os.environ["BUILDAH_STORAGE_DRIVER"]]
                          if os.environ.get("BUILDAH_STORAGE_DRIVER") else []),
             "run", "--isolation", "chroot", f"--volume={container_tmp}:/tmp", *envs, self.name, "--", *command],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the container exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        raise AssertionError(f"not ready within {timeout:.0f}s:\n{self.log_tail()}")

    def server_pid(self) -> int:
        for pid in descendants(self.proc.pid):
            if "bentoml serve" in cmdline(pid):
                return pid
        raise AssertionError(f"no bentoml serve process below buildah run:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self, grace: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            procs = descendants(self.proc.pid)
            self.seen = procs
            # SIGTERM to `bentoml serve` only: it stops its workers, then buildah run returns. Signalling
            # buildah's group instead kills the server and orphans the workers.
            with contextlib.suppress(AssertionError, ProcessLookupError):
                os.kill(self.server_pid(), signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            for pid in procs:  # anything left behind (workers in their own sessions)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.ro_bound:
            subprocess.run(["umount", self.root], check=False)
            self.ro_bound = False
        buildah("umount", self.name, check=False)
        buildah("rm", self.name, check=False)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_image_serves_with_its_own_entrypoint(built_image, tmp_path):
    image = built_image["image"]
    config = json.loads(buildah("inspect", "--type", "image", image).stdout)["OCIv1"]["config"]
    assert config["Entrypoint"] == ["/home/bentoml/bento/env/docker/entrypoint.sh"], config
    assert config["User"] == "bentoml" and "3000/tcp" in config["ExposedPorts"], config
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["BENTO_PATH"] == "/home/bentoml/bento" and env["OPENBLAS_NUM_THREADS"] == "1", env

    # the Kubernetes Deployment's settings (k8s/base/api/deployment.yaml), no Redis in the container
    pod_env = {"BENTOML_HOME": "/tmp/bentoml", "PYTHONDONTWRITEBYTECODE": "1", "ENABLE_CACHING": "false"}
    container = Container(image, tmp_path, pod_env)
    try:
        container.start().wait_ready()
        resp = httpx.post(f"{container.url}/recommend", json={"user_id": "u1", "k": 5}, timeout=30)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert len(body["items"]) == 5 and body["strategy"] == "personalized", body
        assert body["model_version"] == "1" and body["cached"] is False, body
        health = httpx.get(f"{container.url}/health", timeout=10).json()
        assert health["status"] == "ok" and health["redis"] == "disabled", health

        # non-root: the server and its workers run as the image's bentoml user
        server = container.server_pid()
        workers = [pid for pid in descendants(server) if "_bentoml_impl.worker" in cmdline(pid)]
        names = sorted(cmdline(pid).split("--service-name ")[1].split()[0] for pid in workers)
        assert names == ["Timbral"] * API_WORKERS + ["TimbralModel"], [cmdline(pid) for pid in descendants(server)]
        assert {uid_of(pid) for pid in [server, *workers]} == {BENTO_UID}
        # the model came from the bento inside the image; BentoML wrote only to the writable /tmp
        assert "serving timbral-nmf:" in container.log_tail(20000)
        written = {p.relative_to(tmp_path / "container-tmp").parts[0] for p in (tmp_path / "container-tmp").iterdir()}
        assert "bentoml" in written, written
        assert (tmp_path / "container-tmp" / "bentoml").stat().st_uid == BENTO_UID
    finally:
        container.stop()
    assert buildah("inspect", "--type", "container", container.name, check=False).returncode != 0, "container left"
    left = [pid for pid in container.seen if cmdline(pid)]  # a zombie or a gone process has no command line
    assert not left, [cmdline(pid) for pid in left]
