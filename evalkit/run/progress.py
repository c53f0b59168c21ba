"""Progress reporting for long runs: a rich bar on a terminal, heartbeat lines in a log.

The ETA comes from cost, not sample counts: the runner gives every sample a cost in
token-equivalents (attention makes a long sample cost more than its tokens, and a sample on a
shared prefix cache less), and the remaining cost is divided by the cost rate measured so far.
Counting samples overestimated the ETA about 3x, as the longest samples run first.

The counts are requests (the runner's samples, each one model request), not prompts: a RULER prompt
with a one-span answer is one generation and one teacher-forced score, so the progress counts it
twice where a summary's ``n`` counts it once.
"""

from __future__ import annotations

import contextlib
import time

HEARTBEAT_SECONDS = 30.0  # a log line at least this often when stderr is not a terminal
HEARTBEAT_FRACTION = 0.1  # ... and at every tenth of the work


def length_label(samples) -> str:
    """``L=`` the grid's context length of the samples (their ``context_length`` key), not their
    request's tokens: a needle prompt of 4096 tokens with a 5-token answer is scored on 4101."""
    lengths = sorted({s.keys.get("context_length", s.request.length) for s in samples}, key=str)
    return "L=" + ",".join(map(str, lengths))


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"


class ProgressReporter:
    def __init__(
        self, console, quiet: bool = False, heartbeat_seconds: float = HEARTBEAT_SECONDS, clock=time.perf_counter
    ):
        self.console = console
        self.quiet = quiet
        self.heartbeat_seconds = heartbeat_seconds
        self.clock = clock
        self._progress = None
        self._task = None
        self._tokens = 0
        self._seconds = 0.0
        self._done = self._total = 0
        self._cost = self._total_cost = 0.0
        self._started = self._last_line = clock()
        self._next_mark = HEARTBEAT_FRACTION
        self._label = ""

    def start(self, total: int, total_cost: float, skipped: int = 0) -> None:
        """``total`` samples to run, costing ``total_cost`` token-equivalents together."""
        if skipped and not self.quiet:
            self.console.print(f"resuming: {skipped} finished request(s) kept, {total} to go")
        self._total, self._total_cost = total, float(total_cost)
        self._started = self._last_line = self.clock()
        if self.quiet or total == 0 or not self.console.is_terminal:
            return  # a log gets heartbeat lines (see advance); rich draws nothing there until the end
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            TextColumn("{task.fields[samples]}", markup=False),
            TextColumn("{task.fields[rate]}", markup=False),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}", markup=False),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "starting", total=max(self._total_cost, 1e-9), samples=f"0/{total} requests", rate="", eta="eta -"
        )

    def advance(self, samples: int, tokens: int, seconds: float, label: str, cost: float | None = None) -> None:
        """``samples`` finished: ``tokens`` tokens of model input in ``seconds``, costing ``cost``
        token-equivalents (default: the tokens)."""
        self._tokens += tokens
        self._seconds += seconds
        self._done += samples
        self._cost += tokens if cost is None else cost
        self._label = label
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=min(self._cost, self._total_cost),
                description=label,
                samples=f"{self._done}/{self._total} requests",
                rate=f"{self.tokens_per_second:,.0f} tok/s",
                eta=f"eta {self._eta_text()}",
            )
        elif not self.quiet and self._total:
            now = self.clock()
            fraction = self._cost / self._total_cost if self._total_cost else 1.0
            since = now - self._last_line
            # every tenth of the work (not more often than a sixth of the interval), and at least every interval
            if since >= self.heartbeat_seconds or (fraction >= self._next_mark and since >= self.heartbeat_seconds / 6):
                self._heartbeat(now)
                while self._next_mark <= fraction:
                    self._next_mark += HEARTBEAT_FRACTION

    def eta_seconds(self) -> float | None:
        """Remaining cost at the cost rate measured since the start (wall clock); None before any."""
        if self._cost <= 0:
            return None
        elapsed = self.clock() - self._started
        return max(self._total_cost - self._cost, 0.0) * elapsed / self._cost

    def _eta_text(self) -> str:
        eta = self.eta_seconds()
        return "-" if eta is None else format_seconds(eta)

    def _heartbeat(self, now: float) -> None:
        self._last_line = now
        percent = 100 * self._cost / self._total_cost if self._total_cost else 100.0
        self.console.print(
            f"progress: {self._done}/{self._total} requests ({percent:.0f}% of the work), "
            f"{self.tokens_per_second:,.0f} tok/s, elapsed {format_seconds(now - self._started)}, "
            f"eta {self._eta_text()} [{self._label}]",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @property
    def tokens_per_second(self) -> float:
        return self._tokens / self._seconds if self._seconds else 0.0


@contextlib.contextmanager
def quiet_library_warnings(console):
    """Hold back library warnings (Python warnings and transformers' log) while a progress bar is
    drawn, then print each distinct one once, with how often it came."""
    import logging
    import warnings

    seen: dict[str, int] = {}

    class Collect(logging.Handler):
        def emit(self, record):
            key = f"{record.name}: {record.getMessage()}"
            seen[key] = seen.get(key, 0) + 1

    logger = logging.getLogger("transformers")
    handlers, propagate = logger.handlers[:], logger.propagate
    collect = Collect(logging.WARNING)
    logger.handlers, logger.propagate = [collect], False
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield
    finally:
        logger.handlers, logger.propagate = handlers, propagate
        for w in caught:
            key = f"{w.category.__name__}: {w.message}"
            seen[key] = seen.get(key, 0) + 1
        for key, count in seen.items():
            times = f" ({count} times)" if count > 1 else ""
            console.print(f"warning during the run{times}: {key}", markup=False, highlight=False, soft_wrap=True)
