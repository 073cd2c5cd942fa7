"""`bentoml build` from the repo root (BENTOML_HOME in a tmp dir), then `bentoml serve <bento tag>`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import REPO, BentoServer, store_model

BENTOML = str(Path(sys.executable).parent / "bentoml")


def build(home: Path, model_tag: str) -> tuple[str, Path]:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "MODEL_TAG": model_tag}
    proc = subprocess.run([BENTOML, "build", "--output", "tag"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("__tag__:"))
    tag = line.removeprefix("__tag__:").strip()
    name, version = tag.split(":")
    return tag, home / "bentos" / name / version


@pytest.mark.slow
def test_build_then_serve_the_bento(bentoml_home, small_model, model_tag, tmp_path):
    tag, bento = build(bentoml_home, model_tag)
    dockerfile = bento / "env" / "docker" / "Dockerfile"
    assert dockerfile.is_file() and "FROM " in dockerfile.read_text()
    requirements = (bento / "env" / "python" / "requirements.txt").read_text().lower()
    for forbidden in ("mlflow", "pandas", "boto3"):
        assert forbidden not in requirements, forbidden
    for needed in ("numpy", "scikit-learn", "redis", "pydantic-settings", "prometheus-client"):
        assert needed in requirements, needed
    sources = {p.relative_to(bento / "src").as_posix() for p in (bento / "src").rglob("*") if p.is_file()}
    assert "service/service.py" in sources and "timbral/nmf.py" in sources
    assert not any(s.startswith(("training/", "tests/", "loadtest/", ".venv/")) for s in sources), sources
    bento_yaml = (bento / "bento.yaml").read_text()
    assert model_tag in bento_yaml  # the class-scope BentoModel(MODEL_TAG) picked the model

    # a newer model in the store must not change what the built bento serves
    store_model(small_model, bentoml_home, version="99")
    env = {"ENABLE_CACHING": "false", "RATE_LIMIT_ENABLED": "false"}  # no Redis for this one
    with BentoServer(tag, bentoml_home, env=env, workdir=tmp_path, log_path=tmp_path / "bento.log") as server:
        resp = httpx.post(f"{server.url}/recommend", json={"user_id": "u1", "k": 3}, timeout=30)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["strategy"] == "personalized" and len(body["items"]) == 3 and body["model_version"] == "1"
        health = httpx.get(f"{server.url}/health").json()
        assert health["redis"] == "disabled" and health["status"] == "ok"
