"""``evalkit plan``: how many units (needle trials, perplexity windows) a grid needs to see a drop.

From a baseline run, each judged cell's spread across its units (the per-unit means) gives the
standard error of a paired difference at k units: sd_diff / sqrt(k), with sd_diff = sqrt(2) x the
unit spread (no credit taken for pairing, which only helps), and for 0/1 metrics never below one
Bernoulli draw per unit at the accuracy midway through the drop (the units as the sample: what an
exact test can rely on). From stated accuracies, that floor is the spread. The family is the
judged cells (Holm's first step tests at alpha / m), and exact 0/1 tests also need 2^-k below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from evalkit.core.errors import ConfigError
from evalkit.core.metrics import BINARY
from evalkit.report import family, stats

DEFAULT_CELLS = 6  # the needle's default grid: 3 lengths x (greedy_correct, answer_logprob)


@dataclass
class Plan:
    rows: pd.DataFrame  # one row per cell: what it has, what it needs
    units_needed: int | None  # the most any cell needs (None: some cell cannot get there)
    summary: dict


def plan(
    baseline: str | Path | None = None,
    accuracies: list[float] | None = None,
    detect: float = 0.1,
    power: float = 0.8,
    confidence: float = stats.CONFIDENCE,
    cells: int | None = None,
) -> Plan:
    if not (detect > 0 and math.isfinite(detect)):
        raise ConfigError(f"bad --detect {detect}", "give the worsening to detect in metric units, e.g. 0.10")
    if not 0 < power < 1:
        raise ConfigError(f"bad --power {power}", "give a probability in (0, 1), e.g. 0.8")
    if (baseline is None) == (accuracies is None):
        raise ConfigError(
            "plan needs one of --baseline RUN or --accuracy A", "e.g. evalkit plan --accuracy 0.9 --detect 0.1"
        )
    alpha = 1 - confidence
    if baseline is not None:
        frame = _baseline_cells(baseline)
    else:
        bad = [a for a in accuracies if not 0 <= a <= 1]
        if bad:
            raise ConfigError(f"bad --accuracy {bad[0]}", "give accuracies in [0, 1]")
        frame = pd.DataFrame(
            {
                "attention": "-",
                "context_length": "-",
                "metric": "accuracy",
                "baseline": accuracies,
                "units": 0,
                "unit_sd": math.nan,
                "binary": True,
            }
        )
    m = cells or max(len(frame), DEFAULT_CELLS if baseline is None else 1)
    level = alpha / m
    needed, sds = [], []
    for r in frame.itertuples():
        sd = math.sqrt(2) * r.unit_sd if math.isfinite(r.unit_sd) else 0.0
        if r.binary:
            sd = max(sd, family.binary_unit_sd(r.baseline, detect))
        sds.append(sd)
        needed.append(family.units_needed(sd, detect, level, power, binary=bool(r.binary)))
    frame = frame.assign(sd_difference=sds, units_needed=needed)
    most = None if any(n is None for n in needed) else max(needed)
    summary = {
        "detect": detect,
        "power": power,
        "confidence": confidence,
        "family": m,
        "level": level,
        "units_needed": most,
        "baseline": str(baseline) if baseline is not None else None,
    }
    return Plan(frame, most, summary)


def auto_trials(
    detect: float,
    cells: int,
    accuracy: float | None = None,
    baseline: str | Path | None = None,
    power: float = 0.8,
    confidence: float = stats.CONFIDENCE,
) -> tuple[int, str]:
    """``--trials auto:D``: the trials ``plan`` says a compare of ``cells`` judged cells needs to see an
    accuracy drop of ``detect``, and the rule as a command that prints the same number.

    From a baseline run, its own spread (and its judged cells); else at the stated accuracy, or at
    the worst case: the accuracy whose drop passes through 50%, where a trial's 0/1 outcome varies
    most, so that the number suffices at any baseline accuracy."""
    if baseline is not None:
        found = plan(baseline=baseline, detect=detect, power=power, confidence=confidence)
        rule = f"evalkit plan --baseline {baseline} --detect {detect:g} --power {power:g}"
    else:
        at = accuracy if accuracy is not None else min(1.0, 0.5 + detect / 2)
        found = plan(accuracies=[at], detect=detect, power=power, confidence=confidence, cells=cells)
        rule = f"evalkit plan --accuracy {at:g} --detect {detect:g} --cells {cells} --power {power:g}"
    if found.units_needed is None:
        raise ConfigError(
            f"--trials auto:{detect:g}: no feasible number of trials detects that drop ({rule})",
            "plan for a larger drop, or give --trials a number",
        )
    return found.units_needed, rule


def _baseline_cells(folder) -> pd.DataFrame:
    from evalkit.report.runs import compared_metrics, find_runs, metrics_of, samples, unit_columns

    run_list = find_runs(folder)
    run = run_list[0]
    frame = pd.concat([r.frame for r in run_list], ignore_index=True)
    metrics = metrics_of(run_list)  # the cells compare would judge: compared, with a direction
    table = samples(frame, run.keys, unit_columns(run), compared_metrics(metrics))
    rows = []
    for (attention, length, metric), part in table.groupby(["attention", "context_length", "metric"], sort=True):
        if metric not in metrics or not metrics[metric].direction:
            continue
        per_unit = part.groupby("unit").value.mean()
        rows.append(
            {
                "attention": attention,
                "context_length": length,
                "metric": metric,
                "baseline": part.value.mean(),
                "units": len(per_unit),
                "unit_sd": float(per_unit.std(ddof=1)) if len(per_unit) > 1 else math.nan,
                "binary": metrics[metric].kind == BINARY or stats.is_binary(part.value.dropna()),
            }
        )
    if not rows:
        raise ConfigError(f"{folder} has no judged metric to plan for", "give a needle, RULER or perplexity run")
    return pd.DataFrame(rows)


def to_text(p: Plan) -> str:
    s = p.summary
    head = (
        f"To detect a worsening of {s['detect']:g} with {s['power']:.0%} power at {s['confidence']:.0%} confidence "
        f"over {s['family']} cells (each tested at {s['level']:.2g}, Holm's first step): "
    )
    head += (
        f"{s['units_needed']} units per cell (needle: --trials {s['units_needed']}; perplexity: --samples "
        f"{s['units_needed']})"
        if s["units_needed"]
        else "some cell cannot get there with any feasible size"
    )
    lines = [head, ""]
    for r in p.rows.itertuples():
        lines.append(
            f"  {r.attention}@{r.context_length} {r.metric}: baseline {r.baseline:.4g}, {r.units} units now, "
            f"sd of a unit difference {r.sd_difference:.3g} -> {r.units_needed or 'none'} units"
        )
    return "\n".join(lines)
