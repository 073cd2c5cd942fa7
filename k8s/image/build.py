"""Build the bento's OCI image with buildah on the local base image (no Docker engine, no registry).

    .venv/bin/python k8s/image/build.py                      # bento from the repo (MODEL_TAG), then its image
    .venv/bin/python k8s/image/build.py --bento timbral:VER  # image of an existing bento
    .venv/bin/python k8s/image/build.py --json               # last line: a JSON summary (the e2e test reads it)

Steps: ``k8s/image/base.sh`` (the local ``localhost/timbral-base:bookworm``, built once and cached), ``bentoml build``
from the repo root with the unchanged ``bentofile.yaml`` (MODEL_TAG picks the model from ``BENTOML_HOME``), then
``bentoml containerize --backend buildah``. The bento and its generated Dockerfile are exactly the release ones
(``FROM python:3.11-slim``); only this local build replaces that first FROM with the local base, via buildah's
``--from`` (``--opt from=...``). ``--release-base`` keeps the Dockerfile's FROM (a host that can pull it).
The image is tagged ``timbral:<bento version>`` (buildah stores it as ``localhost/timbral:<version>``).

Environment: BENTOML_HOME (the store holding MODEL_TAG; outside this repository), MODEL_TAG
(``timbral-nmf:latest``), BASE_IMAGE, BUILDAH_STORAGE_DRIVER (e.g. ``vfs`` where overlay mounts are not allowed;
default: buildah's own choice). Needs root, buildah >= 1.27 and debootstrap (``make image`` installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASE_SCRIPT = REPO / "k8s" / "image" / "base.sh"
DEFAULT_BASE = "localhost/timbral-base:bookworm"
IMAGE_NAME = "timbral"


def bin_dir() -> Path:
    return Path(sys.executable).parent


def buildah_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("BUILDAH_ISOLATION", "chroot")
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    return env


def buildah(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``buildah [--storage-driver D] ARGS`` with the isolation and storage this project uses."""
    driver = os.environ.get("BUILDAH_STORAGE_DRIVER")
    cmd = ["buildah", *(["--storage-driver", driver] if driver else []), *args]
    return subprocess.run(cmd, env=buildah_env(), capture_output=True, text=True, check=check, timeout=timeout)


def run_logged(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO, timeout: float = 3600) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"{cmd[0]} {cmd[1]} failed ({proc.returncode}); log {log}:\n{tail}")


def check_home(env: dict[str, str]) -> Path:
    home = Path(env.get("BENTOML_HOME") or Path.home() / "bentoml").resolve()
    if home == REPO or REPO in home.parents:
        raise SystemExit(f"BENTOML_HOME={home} lies inside the repository: bentoml build would copy it into the bento")
    return home


def ensure_base(base_image: str, log: Path) -> float:
    start = time.monotonic()
    env = {**buildah_env(), "BASE_IMAGE": base_image}
    run_logged(["bash", str(BASE_SCRIPT)], env, log)
    return time.monotonic() - start


def build_bento(env: dict[str, str], model_tag: str, log: Path, bentofile: Path | None = None) -> str:
    bentoml = str(bin_dir() / "bentoml")
    probe = subprocess.run([bentoml, "models", "get", model_tag], cwd=REPO, env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit(f"model {model_tag} is not in the BentoML store {env.get('BENTOML_HOME', '~/bentoml')}: "
                         "import one first (timbral import-model --model-uri models:/timbral-nmf@champion)")
    extra = ["-f", str(bentofile)] if bentofile else []
    proc = subprocess.run([bentoml, "build", *extra, "--output", "tag"], cwd=REPO, env={**env, "MODEL_TAG": model_tag},
                          capture_output=True, text=True, timeout=600)
    log.open("a").write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"bentoml build failed:\n{proc.stderr[-3000:]}{proc.stdout[-2000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("__tag__:"))
    return line.removeprefix("__tag__:").strip()


def containerize(env: dict[str, str], bento_tag: str, base_image: str | None, no_cache: bool, log: Path) -> str:
    version = bento_tag.split(":", 1)[1]
    image = f"{IMAGE_NAME}:{version}"
    opts = ["layers",  # reuse unchanged steps (apt, uv, requirements) across bentos; NO_CACHE=1 rebuilds all
            f"label=org.opencontainers.image.title={IMAGE_NAME}",
            f"label=org.opencontainers.image.version={version}",
            f"label=org.opencontainers.image.description=Timbral bento {bento_tag}"]
    if base_image:
        opts.append(f"from={base_image}")
    if no_cache:
        opts.append("no-cache")
    if os.environ.get("BUILDAH_STORAGE_DRIVER"):
        opts.append(f"storage-driver={os.environ['BUILDAH_STORAGE_DRIVER']}")
    cmd = [str(bin_dir() / "bentoml"), "containerize", "--backend", "buildah", "-t", image]
    for opt in opts:
        cmd += ["--opt", opt]
    cmd.append(bento_tag)
    run_logged(cmd, env, log)
    # bentoml catches and logs some build errors: believe the image store, not only the exit status
    if buildah("inspect", "--type", "image", image, check=False).returncode != 0:
        raise SystemExit(f"bentoml containerize did not produce {image}; log {log}:\n"
                         f"{log.read_text(errors='replace')[-4000:]}")
    return f"localhost/{image}"


def image_size(image: str) -> str:
    rows = json.loads(buildah("images", "--json", image).stdout or "[]")
    return rows[0]["size"] if rows else "?"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-tag", default=os.environ.get("MODEL_TAG", "timbral-nmf:latest"))
    parser.add_argument("--bento", help="containerize this existing bento instead of building one")
    parser.add_argument("--bentofile", type=Path, default=os.environ.get("BENTOFILE") or None,
                        help="build with this bentofile (env BENTOFILE; default: the repo's bentofile.yaml)")
    parser.add_argument("--base-image", default=os.environ.get("BASE_IMAGE", DEFAULT_BASE))
    parser.add_argument("--release-base", action="store_true",
                        help="keep the Dockerfile's FROM (python:3.11-slim): needs a reachable registry")
    parser.add_argument("--no-cache", action="store_true", default=bool(os.environ.get("NO_CACHE")))
    parser.add_argument("--log", type=Path, default=None, help="build log (default: IMAGE_WORKDIR/build.log)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    args = parser.parse_args(argv)

    for tool in ("buildah", "debootstrap"):
        if shutil.which(tool) is None:
            raise SystemExit(f"need {tool}: apt-get install buildah debootstrap (or make image)")
    env = buildah_env()
    home = check_home(env)
    workdir = Path(os.environ.get("IMAGE_WORKDIR", "/var/tmp/timbral-image"))
    workdir.mkdir(parents=True, exist_ok=True)
    log = args.log or workdir / "build.log"
    log.write_text("")

    base_image = None if args.release_base else args.base_image
    summary: dict = {"base_image": base_image or "(the Dockerfile's FROM)", "bentoml_home": str(home), "log": str(log)}
    if base_image:
        summary["base_seconds"] = round(ensure_base(base_image, log), 1)
    start = time.monotonic()
    bento_tag = args.bento or build_bento(env, args.model_tag, log, args.bentofile)
    summary.update(bento=bento_tag, bento_seconds=round(time.monotonic() - start, 1))
    print(f"bento {bento_tag} ({summary['bento_seconds']} s)", flush=True)

    start = time.monotonic()
    image = containerize(env, bento_tag, base_image, args.no_cache, log)
    summary.update(image=image, image_seconds=round(time.monotonic() - start, 1), size=image_size(image))
    print(f"image {image}: {summary['size']}, built in {summary['image_seconds']} s "
          f"(base {summary.get('base_seconds', '-')} s, bento {summary['bento_seconds']} s)", flush=True)
    if args.json:
        print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
