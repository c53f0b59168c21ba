"""Progress reporting for long runs: a rich bar with samples and tokens/s, or quiet lines."""

from __future__ import annotations

import time


class ProgressReporter:
    def __init__(self, console, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self._progress = None
        self._task = None
        self._tokens = 0
        self._seconds = 0.0

    def start(self, total: int, total_tokens: int, skipped: int = 0) -> None:
        if skipped and not self.quiet:
            self.console.print(f"resuming: {skipped} finished sample(s) kept, {total} to go")
        self._started = time.perf_counter()
        if self.quiet or total == 0:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("starting", total=total, rate="")

    def advance(self, samples: int, tokens: int, seconds: float, label: str) -> None:
        self._tokens += tokens
        self._seconds += seconds
        if self._progress is not None:
            rate = f"{self._tokens / max(self._seconds, 1e-9):,.0f} tok/s"
            self._progress.update(self._task, advance=samples, description=label, rate=rate)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @property
    def tokens_per_second(self) -> float:
        return self._tokens / self._seconds if self._seconds else 0.0
