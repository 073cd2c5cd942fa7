"""`timbral demo` — the main job of `make demo` — end to end, in a throwaway work dir and BentoML home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TIMBRAL = str(Path(sys.executable).parent / "timbral")


@pytest.mark.slow
def test_demo_trains_registers_serves_and_answers(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    proc = subprocess.run([TIMBRAL, "demo", "--workdir", str(tmp_path / "demo"), "--users", "800", "--items", "2000",
                           "--interactions", "40000"], env=env, capture_output=True, text=True, timeout=900,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "ndcg@10" in out and "popularity" in out  # metrics next to the baseline
    assert "version 1 with alias champion" in out
    assert "Top 5 for user" in out
    assert "strategy=personalized model_version=1 cached=false" in out
    assert "cached=true" in out  # the second identical call came from Redis
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], "the demo left processes running"
