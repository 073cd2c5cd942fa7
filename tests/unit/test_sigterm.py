"""SIGTERM unwinds ``with`` blocks (servers get stopped) instead of killing the process outright."""

from __future__ import annotations

import os
import signal

import pytest

from training.local_stack import Terminated, main_stopping_on_sigterm, sigterm_unwinds


def test_sigterm_raises_terminated_inside_the_block_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), sigterm_unwinds():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs between bytecodes
            pass
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_main_stopped_by_sigterm_cleans_up_and_exits_143(capsys):
    cleaned = []

    def main() -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
            return 0
        finally:  # what a ``with LocalStack(...)`` block's exit does; a second SIGTERM must not cut it short
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
            cleaned.append(True)

    assert main_stopping_on_sigterm(main, "bench") == 143
    assert cleaned == [True]
    assert "bench: terminated" in capsys.readouterr().err
    assert main_stopping_on_sigterm(lambda: 0, "bench") == 0
