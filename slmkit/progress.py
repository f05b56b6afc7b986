"""Progress display for long stages: a rich progress bar with epoch, step, loss, examples/s and ETA.

Output goes to stderr so that stdout stays clean for results (`slm predict` pipes JSON). When disabled (tests,
`--quiet`) every call is a no-op, so stages do not branch on it.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

stderr = Console(stderr=True)


class StepProgress:
    """One bar per epoch-like unit of work: `start(name, total)`, `advance(**fields)`, `finish(line)`."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> "StepProgress":
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[speed]} ex/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=stderr,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start(self, description: str, total: int, completed: int = 0) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(description, total=total, completed=completed, loss="-", speed="-")

    def advance(self, loss: float, examples_per_s: float) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, loss=f"{loss:.4f}", speed=f"{examples_per_s:.0f}")

    def log(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line)


class TaskProgress:
    """One bar over a known number of mixed steps (a benchmark's loads, scorings and timing rounds), showing
    the step in progress: `start(total)`, `step(description)` before each, `advance()` after it."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> "TaskProgress":
        if self.enabled:
            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=stderr)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start(self, total: int) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task("starting", total=total)

    def step(self, description: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=description)

    def advance(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1)

    def log(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line)
