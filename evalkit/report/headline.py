"""The headline numbers a training log gets from one evaluation, named ``<metric>@<length>``.

A training dashboard wants a handful of scalars per evaluation, not the summary table: per
context length the task's headline metric (and its 95% interval's ends, so a band can be drawn
from the log alone), and the effective context length where the task has one. With several
attention variants each name gets the variant: ``<variant>/<metric>@<length>``.
"""

from __future__ import annotations

import math
from typing import Any

from evalkit.core.metrics import Metric, of_task

EFFECTIVE = ("effective_length", "effective_length_ci_low", "effective_length_ci_high")


def headline_metrics(
    summary: Any, task: str, bounds: bool = False, metrics: dict[str, Metric] | None = None
) -> dict[str, float]:
    """{"accuracy@1024": 0.9, ..., "effective_length": 2048} from a task's summary DataFrame;
    ``bounds`` adds ``<metric>_ci_low@<length>`` and ``_ci_high``. Missing values are left out.
    The columns are the summary columns of the metrics the task declares headline (``metrics``: a
    run's declaration; default: the installed task's); a task that declares none: every column with
    an interval."""
    if summary is None or len(summary) == 0:
        return {}
    columns = [c for c in summary.columns if f"{c}_ci_low" in summary.columns]
    declared = of_task(task) if metrics is None else metrics
    headline = list(dict.fromkeys(m.column for m in declared.values() if m.headline))
    wanted = [c for c in headline or columns if c in columns]
    variants = list(dict.fromkeys(summary["attention"]))
    out: dict[str, float] = {}
    for row in summary.itertuples(index=False):
        row = row._asdict()
        prefix = f"{row['attention']}/" if len(variants) > 1 else ""
        length = row["context_length"]
        if str(length) == "all":
            for column in EFFECTIVE if "threshold" in row else ():
                # no tested length at or above the threshold: 0 tokens, so the curve shows it
                out[f"{prefix}{column}"] = float(row[column]) if _finite(row.get(column)) else 0.0
            continue
        for column in wanted:
            for suffix in ("", "_ci_low", "_ci_high") if bounds else ("",):
                value = row.get(f"{column}{suffix}")
                if _finite(value):
                    out[f"{prefix}{column}{suffix}@{int(length)}"] = float(value)  # a later row (ruler's average) wins
    return out


def metric_names(summary: Any, task: str, bounds: bool = False) -> list[str]:
    """The names ``headline_metrics`` produces, sorted (for docs and tests)."""
    return sorted(headline_metrics(summary, task, bounds))


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
