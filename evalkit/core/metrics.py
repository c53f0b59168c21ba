"""What a metric means, declared by the task that writes it.

A task lists its metrics (``Task.metrics``) beside the rows that carry them; the run writes the
declaration into its manifest (``manifest["metrics"]``), and compare, gate, plan, the training-log
headline and figures read it from there (``declared``), falling back to the task class for runs
written before manifests carried it. No table elsewhere says which way a metric is better: a
task that adds a metric declares it once, and every reader follows.

    Metric("greedy_correct", HIGHER, BINARY, headline=True, summary="accuracy", effective_length="pooled")
    Metric("mean_nll", LOWER, CONTINUOUS, bounds=(0, None), exp="perplexity")
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

HIGHER, LOWER, REPORTED = 1, -1, 0  # direction: higher is better, lower is better, reported only

# kinds: what a value is, which fixes its interval and its paired test
BINARY = "binary"  # 0/1 per sample: Wilson interval; exact McNemar (sign flip over units) when paired
SCORE = "score"  # a graded score in [0, 1] per sample, often exactly 0 or 1 (RULER's string match)
CONTINUOUS = "continuous"  # a real number (``bounds`` where it has them): t interval, paired t
LOG_PROB = "log-prob"  # a log-probability (<= 0): t interval clipped at 0
KINDS = (BINARY, SCORE, CONTINUOUS, LOG_PROB)
TESTS = {  # the paired test compare runs for each kind (``stats.paired_difference``)
    BINARY: "exact McNemar (one pair per unit), else paired t on per-unit differences with exact sign-flip p",
    SCORE: "paired t on per-unit differences with exact sign-flip p up to 16 units (McNemar's for 0/1 scores)",
    CONTINUOUS: "paired t on per-unit differences",
    LOG_PROB: "paired t on per-unit differences",
}


@dataclass(frozen=True)
class Metric:
    """One row metric of a task (a value of the ``metric`` column) and how to read it.

    ``direction``: HIGHER or LOWER is better (judged by compare, gate and plan), or REPORTED (never
    a regression). ``kind``: BINARY, SCORE, CONTINUOUS or LOG_PROB (its interval, its bounds and
    compare's test). ``compared``: compare makes a cell of it per length (per-bin curves, counts and
    diagnostics are not). ``headline``: the task's headline number, which a training log carries per
    length and ``evalkit plot`` draws first. ``summary``: its column in summary.csv (default: its
    name). ``exp``: the metric shown through exp (mean_nll -> perplexity), judged by the same test.
    ``label``: the axis label. ``bounds``: (low, high) a value cannot leave (None: unbounded; default
    from the kind). ``effective_length``: this metric's curve over lengths gives the effective
    context length: "pooled" (every row of a length together) or a key column whose groups are
    averaged first, each counting once (RULER: "ruler_task"). ``per``: a key column whose values
    compare judges each as a cell of its own, named ``metric[value]`` (RULER: each task), beside the
    cell of every value together.
    """

    name: str
    direction: int = REPORTED
    kind: str = CONTINUOUS
    compared: bool = True
    headline: bool = False
    summary: str | None = None
    exp: str | None = None
    label: str | None = None
    bounds: tuple[float | None, float | None] | None = None
    effective_length: str | None = None
    per: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"metric {self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.direction not in (HIGHER, LOWER, REPORTED):
            raise ValueError(f"metric {self.name}: direction must be HIGHER (1), LOWER (-1) or REPORTED (0)")

    @property
    def column(self) -> str:
        """Its summary.csv column."""
        return self.summary or self.name

    @property
    def range(self) -> tuple[float, float]:
        """(low, high) its values and their intervals stay within (infinite where unbounded)."""
        low, high = self.bounds or {BINARY: (0.0, 1.0), SCORE: (0.0, 1.0), LOG_PROB: (None, 0.0)}.get(
            self.kind, (None, None)
        )
        return (-math.inf if low is None else float(low)), (math.inf if high is None else float(high))

    @property
    def test(self) -> str:
        """The paired test compare runs on it."""
        return TESTS[self.kind]

    @property
    def axis_label(self) -> str:
        return self.label or self.column.replace("_", " ")

    def record(self) -> dict[str, Any]:
        """What the manifest stores (``from_record`` reads it back)."""
        out = dataclasses.asdict(self)
        out["bounds"] = list(self.bounds) if self.bounds is not None else None
        return out

    @classmethod
    def from_record(cls, record: dict) -> Metric:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in record.items() if k in known}  # a newer evalkit's extra fields: ignored
        if values.get("bounds") is not None:
            values["bounds"] = tuple(values["bounds"])
        return cls(**values)


def records(metrics) -> list[dict]:
    """The manifest's ``metrics`` entry for a task's declarations."""
    return [m.record() for m in metrics]


def declared(manifest: dict | None, task: str | None) -> dict[str, Metric]:
    """{name: Metric} for a run: its manifest's declaration, else (runs written before manifests
    carried one) its task class's, else (a plugin not installed here) none: every metric reported only."""
    recorded = (manifest or {}).get("metrics")
    if recorded:
        return {m.name: m for m in map(Metric.from_record, recorded)}
    return of_task(task)


def of_task(task: str | None) -> dict[str, Metric]:
    """{name: Metric} from the installed task class's declaration ({} when it is not installed)."""
    from evalkit.core.errors import ConfigError
    from evalkit.core.registry import get_task

    if not task:
        return {}
    try:
        return {m.name: m for m in get_task(task).metrics}
    except ConfigError:
        return {}


def base_name(cell_metric: str) -> str:
    """The declared metric behind a compare cell's name: string_match[vt] -> string_match."""
    return cell_metric.split("[", 1)[0]


def exp_source(metrics: dict[str, Metric], name: str) -> Metric | None:
    """The metric whose exp ``name`` is (perplexity -> mean_nll), or None."""
    return next((m for m in metrics.values() if m.exp == name), None)


def by_column(metrics: dict[str, Metric], column: str) -> Metric | None:
    """The first declared metric shown in summary column ``column`` (accuracy -> greedy_correct)."""
    return metrics.get(column) or next((m for m in metrics.values() if m.column == column), None)
