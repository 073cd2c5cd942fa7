"""`timbral stack` leaves nothing running when it is stopped with SIGTERM (kill, a CI timeout), as with Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

TIMBRAL = str(Path(sys.executable).parent / "timbral")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 0)], ids=["SIGTERM", "SIGINT"])
def test_stopping_the_stack_stops_its_servers(tmp_path, sig, code):
    proc = subprocess.Popen([TIMBRAL, "stack", "--workdir", str(tmp_path / "stack")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # the export lines come once both servers answer
            if "export MLFLOW_TRACKING_URI=" in line or time.monotonic() > deadline:
                break
        children = psutil.Process(proc.pid).children(recursive=True)
        commands = " ".join(" ".join(c.cmdline()) for c in children)
        assert "moto.server" in commands and "mlflow" in commands, commands
        # MLflow's job runner (launched with the server, before it answers) is switched off: eight idle processes
        assert "_job_runner" not in commands and "huey" not in commands, commands
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == code, proc.stderr.read()[-2000:]
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [" ".join(p.cmdline()) for p in alive]
    finally:  # a failing run must not leave the servers to the rest of the suite
        if proc.poll() is None:
            proc.kill()
        for child in children:
            if child.is_running():
                child.kill()
