"""Progress display for long steps: rich progress bars on a terminal, quiet one-liners elsewhere."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

Update = Callable[..., None]  # update(done, total=None, note="")


class Reporter:
    """Does nothing: for library use and tests."""

    @contextlib.contextmanager
    def stage(self, title: str, total: float | None = None) -> Iterator[Update]:
        yield lambda *a, **k: None

    def info(self, message: str) -> None:
        pass


class ConsoleReporter(Reporter):
    """A rich progress bar per stage (spinner when the total is unknown), with elapsed time."""

    def __init__(self, stream=None) -> None:
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr)

    @contextlib.contextmanager
    def stage(self, title: str, total: float | None = None) -> Iterator[Update]:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        started = time.perf_counter()
        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[note]}"),
                   TimeElapsedColumn()]
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(title, total=total, note="")

            def update(done: float, total: float | None = None, note: str = "") -> None:
                if total is not None:
                    bar.update(task, total=total)
                bar.update(task, completed=done, note=note)

            yield update
        self.console.print(f"[green]✓[/green] {title} ({time.perf_counter() - started:.1f}s)")

    def info(self, message: str) -> None:
        self.console.print(message)
