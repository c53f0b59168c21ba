"""Baseline vs candidate: the comparison and CI gate behind ``evalkit compare``.

Sides. ``evalkit compare BASE CAND`` reads the run in each folder (or every run below it, as a
sweep writes them). ``--baseline KEY=VALUE`` and ``--candidate KEY=VALUE`` (keys attention, model,
run, seed; repeatable, comma lists allowed) select each side's rows; with one folder, both sides
come from it. Cells are (attention, context_length, metric); when a selector names attention, the
two sides' variants face each other (``softmax -> ssmax``) and attention leaves the key.

Metrics. What each metric means is its task's declaration (``evalkit.core.metrics``), read from the
runs' manifests (the task class's for older runs): which metrics get cells, which way is worse (a
metric without a direction is shown, never judged), the test its kind calls for, its exp row
(``mean_nll`` -> ``perplexity``), a cell per part where it is declared ``per`` a key (RULER's
``string_match[vt]`` beside the average), and the curve the effective length comes from.

Pairing. When both sides share prompts (same seed, the same task options outside the grid extents,
the same tokenizer, and per prompt the same provenance: offset, answer, needle position), each cell
is compared prompt by prompt with ``stats.paired_difference``: exact McNemar for 0/1 metrics with
one prompt per unit, a paired t on per-unit mean differences otherwise (checked by the exact sign
flip for 0/1 metrics and scores on few units). Else the sides are
independent samples (``stats.unpaired_difference``). The unit is the task's (``Task.unit_columns``:
a needle trial under ``--draw trial``, a perplexity window), with the seed on top; heads and
position bins of one prompt are averaged first. Perplexity is judged on per-window mean NLL; its
perplexity row is the same test seen through exp, so the two rows always agree.

Verdict. A cell regresses when its change in the metric's bad direction is larger than the
tolerance AND beyond noise (p < 1 - confidence); ``strict`` drops the noise condition. The
tolerance always includes a floating-point floor (FLOAT_TOLERANCE). Besides cells, the comparison
fails (exit 1) when a run is interrupted or incomplete, when the candidate lacks a cell the
baseline has (unless ``allow_missing``), when the runs' task options or tokenizer differ or their
prompts do not match although pairing applies (unless ``unpaired``), and when the candidate's
effective context length is below the baseline's beyond noise (optimistic end below the
baseline's pessimistic end; ``strict``: point below point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from evalkit.core.errors import ConfigError, EvalkitError
from evalkit.core.metrics import BINARY, Metric, base_name, exp_source, of_task
from evalkit.report import stats
from evalkit.report.render import (
    checks_table,
    dumps,
    effective_length_text,
    fmt,
    interval,
    junit_xml,
    length_text,
    markdown_table,
    records,
    rich_table,
)
from evalkit.report.runs import (
    Run,
    compared_metrics,
    describe_selector,
    find_runs,
    metrics_of,
    option_differences,
    parse_selector,
    samples,
    select,
    setup_differences,
    unit_columns,
)
from evalkit.report.tolerances import FLOAT_TOLERANCE, Tolerance, load_tolerances

ROW_COLUMNS = [
    "attention",
    "context_length",
    "metric",
    "baseline",
    "candidate",
    "delta",
    "rel_delta",
    "direction",
    "tolerance",
    "ci_low",
    "ci_high",
    "p_value",
    "p_worse",
    "p_adjusted",
    "beyond_noise",
    "regression",
    "improvement",
    "minimal_detectable",
    "power_note",
    "paired",
    "pairs",
    "units",
    "test",
]
CELL_EXTRA = ["p_less", "p_greater", "se", "p_floor", "derived", "unit_data"]  # compare_cells' working columns


@dataclass
class Comparison:
    rows: pd.DataFrame  # one row per cell, ROW_COLUMNS
    checks: list[dict]  # run-level checks: {"check", "passed", "reason"}
    lengths: pd.DataFrame  # effective context length per side and variant (needle-type runs)
    summary: dict
    exit_code: int
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> pd.DataFrame:
        return self.rows[self.rows.regression]

    @property
    def improvements(self) -> pd.DataFrame:
        return self.rows[self.rows.improvement]

    @property
    def failed_checks(self) -> list[dict]:
        return [c for c in self.checks if not c["passed"]]


def _check(name: str, problem: str | None, ok: str) -> dict:
    return {"check": name, "passed": problem is None, "reason": problem or ok}


def _one(frame: pd.DataFrame, column: str, side: str) -> str:
    values = sorted(frame[column].astype(str).unique())
    if len(values) != 1:
        raise ConfigError(
            f"the {side} holds {len(values)} {column} values ({', '.join(values)}): compare one against one",
            f"select one with --{side} {column}=NAME",
        )
    return values[0]


def _short_test(test: str) -> str:
    for start, name in (
        ("exact McNemar", "McNemar"),
        ("paired t", "paired t"),
        ("two-proportion z", "z (unpaired)"),
        ("Welch", "Welch t (unpaired)"),
    ):
        if test.startswith(start):
            return name
    return test


def compare_runs(
    baseline: str | Path,
    candidate: str | Path | None = None,
    *,
    base_select: list[str] | None = None,
    cand_select: list[str] | None = None,
    tolerance: float | None = None,
    relative: bool = False,
    metric_tolerances: dict[str, Tolerance] | None = None,
    confidence: float = stats.CONFIDENCE,
    strict: bool = False,
    allow_missing: bool = False,
    unpaired: bool = False,
    threshold: str | float = stats.RULER_THRESHOLD,
    correction: str = "holm",
    power: float = 0.8,
    detect: float | None = None,
    require_power: bool = False,
    allow_dtype_change: bool = False,
    nll_tolerance: float | None = None,
    tolerances_file: str | Path | None = None,
) -> Comparison:
    """Baseline vs candidate (see the module docstring). ``correction`` controls the family-wise error
    over the judged cells; ``detect`` (a worsening in metric units) makes cells that cannot see it
    underpowered; ``require_power`` fails on an underpowered cell instead of warning;
    ``nll_tolerance`` is the perplexity tolerance given once, in NLL (the perplexity row follows
    through exp); ``tolerances_file`` adds per-metric tolerances from a TOML file
    (``evalkit.report.tolerances``); ``allow_dtype_change`` turns a dtype difference into a note."""
    from evalkit.report import family

    if correction not in family.CORRECTIONS:
        raise ConfigError(f"bad --correction {correction!r}", f"use one of {', '.join(family.CORRECTIONS)}")
    if not 0 < power < 1:
        raise ConfigError(f"bad --power {power}", "give a probability in (0, 1), e.g. 0.8")
    default = Tolerance(relative=tolerance or 0.0) if relative else Tolerance(absolute=tolerance or 0.0)
    tolerances = dict(metric_tolerances or {})
    if tolerances_file is not None:
        tolerances.update(load_tolerances(tolerances_file, _judged_names(baseline, candidate)))
    if nll_tolerance is not None and "mean_nll" in tolerances:
        raise ConfigError("--nll-tolerance and a mean_nll tolerance both set the NLL tolerance", "give it once")
    if nll_tolerance is not None:
        tolerances["mean_nll"] = Tolerance(absolute=nll_tolerance)
    for name, tol in [("default", default), *tolerances.items()]:
        if any(v is not None and (v < 0 or not math.isfinite(v)) for v in (tol.absolute, tol.relative)):
            raise ConfigError(f"tolerance for {name} must be a finite number >= 0", "e.g. --tolerance 0.01")
    if not 0 < confidence < 1:
        raise ConfigError(f"bad --confidence {confidence}", "give a level in (0, 1), e.g. 0.95")
    threshold_kind, threshold_value = stats.parse_threshold(threshold)
    b_sel, c_sel = parse_selector(base_select, "baseline"), parse_selector(cand_select, "candidate")
    if candidate is None and not (b_sel and c_sel):
        raise ConfigError(
            "one run folder given: nothing says which rows are the baseline and which the candidate",
            "add --baseline attention=softmax --candidate attention=ssmax, or give two run folders",
        )
    b_runs = find_runs(baseline)
    c_runs = b_runs if candidate is None else find_runs(candidate)
    tasks = sorted({r.task for r in b_runs + c_runs})
    if len(tasks) != 1:
        raise ConfigError(f"the runs are of different tasks ({', '.join(tasks)})", "compare runs of the same task")
    task, keys = tasks[0], b_runs[0].keys
    if any(set(r.keys) != set(keys) for r in b_runs + c_runs):
        raise ConfigError(
            f"the runs have different key columns ({sorted({r.keys for r in b_runs + c_runs})})",
            "compare runs made by the same evalkit version",
        )
    b_frame, c_frame = select(b_runs, b_sel, "baseline"), select(c_runs, c_sel, "candidate")
    b_runs = [r for r in b_runs if r.name in set(b_frame.run)]
    c_runs = [r for r in c_runs if r.name in set(c_frame.run)]
    models = _one(b_frame, "model", "baseline"), _one(c_frame, "model", "candidate")
    # Variants face each other when a selector names them, or when each side holds one and they differ
    # (two checkpoints each run with its own variant); otherwise softmax is compared with softmax, ...
    b_att, c_att = set(b_frame.attention.astype(str)), set(c_frame.attention.astype(str))
    by_attention = (
        "attention" not in b_sel and "attention" not in c_sel and not (len(b_att) == len(c_att) == 1 and b_att != c_att)
    )
    variants = (
        None if by_attention else (_one(b_frame, "attention", "baseline"), _one(c_frame, "attention", "candidate"))
    )

    units = unit_columns(b_runs[0])
    metrics = metrics_of(b_runs + c_runs)  # what each metric means, as the runs declare it
    compared = compared_metrics(metrics)
    b, c = samples(b_frame, keys, units, compared), samples(c_frame, keys, units, compared)
    b, c = _parts(b, metrics), _parts(c, metrics)
    b["variant"], c["variant"] = b.attention, c.attention  # each side's own, for its effective length
    if not by_attention:  # the two variants face each other in one cell
        b["attention"] = c["attention"] = f"{variants[0]} → {variants[1]}"

    checks, notes = _run_checks(b_runs, c_runs)
    notes += _backend_note(b_runs, c_runs)
    same_runs = {r.folder.resolve() for r in b_runs} == {r.folder.resolve() for r in c_runs}
    itself = b_sel == c_sel and (same_runs or _same_rows(b_frame, c_frame))
    if itself:  # no regression by construction: say so wherever the verdict is shown
        checks.append(_self_check(b_runs, same_runs))
    differences = [] if same_runs else option_differences(b_runs, c_runs)
    b_seeds, c_seeds = sorted(map(str, b.seed.unique())), sorted(map(str, c.seed.unique()))
    if b_seeds != c_seeds:
        differences.insert(
            0, f"seeds differ (baseline {', '.join(b_seeds)}; candidate {', '.join(c_seeds)}): other prompts or windows"
        )
    setup = [] if same_runs else setup_differences(b_runs, c_runs)
    dtype_notes = [d for d in setup if d.startswith("dtype") and allow_dtype_change]
    setup = [d for d in setup if d not in dtype_notes]
    notes += [f"{d} (allowed by --allow-dtype-change)" for d in dtype_notes]
    pairing_wanted = not unpaired and not differences
    if unpaired:
        notes += [f"{d} (compared unpaired: --unpaired)" for d in differences + setup]
        pairing = "unpaired (--unpaired): the sides are independent samples"
    else:
        checks.append(
            _check(
                "comparable runs (seed, windows, task options, tokenizer, dtype, device)",
                "; ".join(differences + setup) + "; pass --unpaired if you mean to compare them"
                if differences or setup
                else None,
                "same seed, task options, tokenizer, dtype and device class",
            )
        )
        pairing = (
            f"paired prompt by prompt (seed {', '.join(b_seeds)} on both sides, same task options and tokenizer)"
            if pairing_wanted
            else "unpaired: the runs differ (see the failed check)"
        )

    cells, prompt_problems, missing, extra = compare_cells(b, c, pairing_wanted, confidence, metrics)
    if pairing_wanted:
        checks.append(
            _check(
                "same prompts",
                "; ".join(prompt_problems) or None,
                "every paired prompt has the same provenance on both sides",
            )
        )
    checks.append(
        _check(
            "candidate has every baseline cell",
            None
            if not missing or allow_missing
            else f"the candidate lacks {len(missing)} cell(s) the baseline has: {', '.join(missing[:12])}"
            + (" …" if len(missing) > 12 else "")
            + "; rerun it on the same grid, or pass --allow-missing",
            "every baseline cell is in the candidate"
            if not missing
            else f"{len(missing)} baseline cell(s) missing, allowed by --allow-missing: {', '.join(missing[:12])}",
        )
    )
    if missing and allow_missing:
        notes.append(checks[-1]["reason"])
    if extra:
        notes.append(
            f"only in the candidate (not compared): {', '.join(extra[:12])}" + (" …" if len(extra) > 12 else "")
        )
    if cells.empty:
        raise ConfigError(
            f"no cell in common: baseline has {_cells_of(b)}; candidate has {_cells_of(c)}",
            "run the candidate on the baseline's lengths and metrics, or select other rows",
        )

    rows, procedure = _verdicts(cells, default, tolerances, strict, correction, confidence, power, detect, metrics)
    weak = rows[rows.direction.ne(0) & rows.power_note.ne("")]
    checks.append(_power_check(weak, len(rows[rows.direction.ne(0)]), require_power, detect))
    lengths = _effective_lengths(b, c, threshold_kind, threshold_value, confidence, metrics)
    if not lengths.empty:
        checks += _length_checks(lengths, strict)
    failed = [ch for ch in checks if not ch["passed"]]
    exit_code = int(bool(rows.regression.any() or failed))
    summary = {
        "task": task,
        "baseline": str(baseline),
        "candidate": str(candidate if candidate is not None else baseline),
        "baseline_select": describe_selector(b_sel),
        "candidate_select": describe_selector(c_sel),
        "baseline_model": models[0],
        "candidate_model": models[1],
        "baseline_runs": [str(r.folder) for r in b_runs],
        "candidate_runs": [str(r.folder) for r in c_runs],
        "pairing": pairing,
        "unit": "+".join(["seed", *units]),
        "confidence": confidence,
        "strict": strict,
        "tolerance": _describe_tolerance(default),
        "correction": procedure,
        "one_sided": True,
        "power": power,
        "detect": detect,
        "underpowered": int(len(weak)),
        "threshold": f"rel:{threshold_value:g}" if threshold_kind == "rel" else threshold_value,
        "cells": len(rows),
        "regressions": int(rows.regression.sum()),
        "improvements": int(rows.improvement.sum()),
        "beyond_noise": int(rows.beyond_noise.sum()),
        "tests": sorted(set(rows.test.map(_short_test))),
        "failed_checks": [f"{ch['check']}: {ch['reason']}" for ch in failed],
        "notes": notes,
        "self_comparison": itself,
        "exit_code": exit_code,
    }
    return Comparison(rows, checks, lengths, summary, exit_code, notes)


def _run_checks(b_runs: list[Run], c_runs: list[Run]) -> tuple[list[dict], list[str]]:
    checks = []
    for side, runs in (("baseline", b_runs), ("candidate", c_runs)):
        problems = [r.completeness.problem for r in runs if not r.complete]  # the one rule (store.run_folder)
        checks.append(
            _check(f"{side} complete", "; ".join(problems) or None, f"{len(runs)} run(s) finished every planned sample")
        )
    return checks, []


def _same_rows(b: pd.DataFrame, c: pd.DataFrame) -> bool:
    """Whether the two sides hold the same rows (a run and its copy: only the folder name differs)."""
    drop = [k for k in ("run",) if k in b.columns]
    return b.drop(columns=drop).reset_index(drop=True).equals(c.drop(columns=drop).reset_index(drop=True))


def _self_check(runs: list[Run], same_folder: bool) -> dict:
    """A warning, not a failure: comparing a run with itself is harmless, but its "no regression" means nothing."""
    what = ", ".join(str(r.folder) for r in runs)
    how = "the same run folder" if same_folder else "identical rows (a copy of one run)"
    return {
        "check": "baseline and candidate differ",
        "passed": True,
        "warning": True,
        "reason": f"both sides are {how}: {what}; a run compared with itself shows no regression by construction "
        "(give two runs, or select different rows with --baseline/--candidate)",
    }


def _backend_note(b_runs: list[Run], c_runs: list[Run]) -> list[str]:
    """Which backend answered each side (the manifest's model record): runs of one model on two
    backends pair prompt by prompt, and the report says which engine produced which numbers."""

    def named(runs: list[Run]) -> str:
        found = {(r.manifest.get("model") or {}).get("backend") for r in runs}
        return ", ".join(sorted(b for b in found if b)) or "transformers"

    base, cand = named(b_runs), named(c_runs)
    return [f"backend: baseline {base}, candidate {cand}"] if base != cand else [f"backend: {base}"]


def _cells_of(frame: pd.DataFrame) -> str:
    parts = frame[["attention", "context_length"]].drop_duplicates().sort_values(["attention", "context_length"])
    return "; ".join(f"{a}@{','.join(str(n) for n in p.context_length)}" for a, p in parts.groupby("attention"))


def _parts(frame: pd.DataFrame, metrics: dict[str, Metric]) -> pd.DataFrame:
    """Metrics declared ``per`` a key column (RULER's string match per task) get a cell per value of it,
    ``metric[value]``, beside the cell of all values together (RULER's average: every task has the same
    number of samples, so the pooled mean is the mean of the task means)."""
    extra = []
    for m in metrics.values():
        if m.per and m.per in frame.columns:
            rows = frame[frame.metric == m.name]
            extra.append(rows.assign(metric=m.name + "[" + rows[m.per].map(str) + "]"))
    return pd.concat([frame, *extra], ignore_index=True) if extra else frame


def _judged_names(baseline, candidate) -> set[str]:
    """Metrics a tolerances file may name: those with a direction in any installed task's declaration or
    in the runs' own (one file may serve the compares of several tasks)."""
    from evalkit.core.registry import task_names

    names = set()
    for task in task_names():
        names |= {n for n, m in of_task(task).items() if m.direction}
    for folder in (baseline, candidate):
        try:
            runs = find_runs(folder) if folder is not None else []
        except EvalkitError:  # reported where the runs are read
            runs = []
        for run in runs:
            names |= {n for n, m in run.metrics.items() if m.direction}
            names |= {m.exp for m in run.metrics.values() if m.direction and m.exp}
    return names


def compare_cells(b: pd.DataFrame, c: pd.DataFrame, pairing: bool, confidence: float, metrics=None):
    """Per (attention, context_length, metric): both sides' means and the Difference, paired when the
    prompts match, by the test the metric's declared kind calls for (``metrics``: {name: Metric})."""
    metrics = metrics or {}
    key = ["attention", "context_length", "metric"]
    b_groups, c_groups = dict(list(b.groupby(key, sort=True))), dict(list(c.groupby(key, sort=True)))
    missing = [f"{a}@{n} {m}" for (a, n, m) in b_groups if (a, n, m) not in c_groups]
    extra = [f"{a}@{n} {m}" for (a, n, m) in c_groups if (a, n, m) not in b_groups]
    cells, problems = [], []
    for cell, bp in b_groups.items():
        if cell not in c_groups:
            continue
        cp = c_groups[cell]
        joined = bp.merge(cp, on="sample", suffixes=("_b", "_c")) if pairing else bp.iloc[:0]
        differ = joined[joined.prov_b != joined.prov_c] if len(joined) else joined
        if len(differ):
            problems.append(
                f"{cell[0]}@{cell[1]} {cell[2]}: {len(differ)} of {len(joined)} prompts differ "
                f"(e.g. sample {differ['sample'].iloc[0]}: {differ.prov_b.iloc[0]} vs {differ.prov_c.iloc[0]})"
            )
        unit_data = None
        declared = metrics.get(base_name(cell[2]))
        kind = declared.kind if declared else None
        if len(joined) and not len(differ):
            diff = stats.paired_difference(joined.value_b, joined.value_c, joined.unit_b, confidence, kind)
            left_out = len(bp) + len(cp) - 2 * len(joined)
            test = diff.test + (f"; {left_out} unpaired prompt(s) left out" if left_out else "")
            means = joined.value_b.mean(), joined.value_c.mean()
            per_unit = (
                (joined.value_c - joined.value_b).groupby(joined.unit_b.to_numpy(), sort=True).agg(["sum", "count"])
            )
            per_unit = per_unit[per_unit["count"] > 0]
            unit_data = (
                per_unit.index.astype(str).to_numpy(),
                per_unit["sum"].to_numpy(float),
                per_unit["count"].to_numpy(float),
            )
        else:
            one_each = lambda p: None if p.unit.is_unique else p.unit  # noqa: E731 - Newcombe needs no clusters
            diff = stats.unpaired_difference(bp.value, cp.value, one_each(bp), one_each(cp), confidence)
            test, means = diff.test, (bp.value.mean(), cp.value.mean())
        floor = _p_floor(diff, bp, cp, unit_data is not None, kind)
        cells.append(
            _cell_row(
                cell, means, diff, test, paired=test.startswith(("exact", "paired")), floor=floor, unit_data=unit_data
            )
        )
        if declared and declared.exp and declared.name == cell[2]:  # perplexity / LongPPL: the same test via exp
            scale = math.exp(means[0])
            cells.append(
                _cell_row(
                    (cell[0], cell[1], declared.exp),
                    (scale, math.exp(means[1])),
                    diff,
                    test,
                    paired=cells[-1]["paired"],
                    through=lambda d: scale * math.expm1(d),
                    floor=floor,
                    derived=True,
                )
            )
    columns = [
        c
        for c in ROW_COLUMNS
        if c
        not in (
            "rel_delta",
            "direction",
            "tolerance",
            "regression",
            "improvement",
            "p_worse",
            "p_adjusted",
            "minimal_detectable",
            "power_note",
        )
    ]
    return pd.DataFrame(cells, columns=columns + CELL_EXTRA), problems, missing, extra


def _p_floor(diff: stats.Difference, bp: pd.DataFrame, cp: pd.DataFrame, paired: bool, kind=None) -> float:
    """The smallest one-sided p the cell's test can reach: exact 0/1 tests and the sign flip have a floor."""
    if kind == "score" and paired:  # t checked by the exact sign flip up to SIGN_FLIP_MAX_UNITS units
        return 0.5**diff.units if diff.units <= stats.SIGN_FLIP_MAX_UNITS else 0.0
    binary = stats.is_binary(bp.value.dropna()) and stats.is_binary(cp.value.dropna())
    if not binary or kind not in (None, BINARY):
        return 0.0
    if paired:  # McNemar on n pairs or the exact sign flip on k units: 1 / 2^units at best
        return 0.5**diff.units if diff.units <= stats.SIGN_FLIP_MAX_UNITS or diff.units == diff.pairs else 0.0
    kb, kc = bp.unit.nunique(), cp.unit.nunique()
    if bp.unit.is_unique and cp.unit.is_unique:
        return 0.0  # the z test on independent rows has no floor
    return 1.0 / math.comb(kb + kc, kb)


def _cell_row(
    cell,
    means,
    diff: stats.Difference,
    test: str,
    paired: bool,
    through=lambda d: d,
    floor: float = 0.0,
    unit_data=None,
    derived: bool = False,
) -> dict:
    return {
        "attention": cell[0],
        "context_length": cell[1],
        "metric": cell[2],
        "baseline": float(means[0]),
        "candidate": float(means[1]),
        "delta": float(means[1] - means[0]),
        "ci_low": through(diff.ci_low),
        "ci_high": through(diff.ci_high),
        "p_value": diff.p_value,
        "beyond_noise": diff.beyond_noise,
        "paired": paired,
        "pairs": diff.pairs,
        "units": diff.units,
        "test": test,
        "p_less": diff.p_less,
        "p_greater": diff.p_greater,
        "se": diff.se,
        "p_floor": floor,
        "derived": derived,
        "unit_data": unit_data,
    }


def _verdicts(
    cells: pd.DataFrame,
    default: Tolerance,
    tolerances: dict[str, Tolerance],
    strict: bool,
    correction: str = "holm",
    confidence: float = stats.CONFIDENCE,
    power: float = 0.8,
    detect: float | None = None,
    metrics: dict[str, Metric] | None = None,
) -> tuple[pd.DataFrame, str]:
    """Each cell's verdict: worse than its tolerance AND, one-sided and adjusted over the family of
    judged cells, beyond noise. The perplexity row shares its mean_nll row's test and verdict. A
    metric's direction is its declaration's (``metrics``); an undeclared metric is reported, never judged."""
    from evalkit.report import family

    metrics = metrics or {}
    rows = cells.copy().reset_index(drop=True)
    b, c = rows.baseline.astype(float), rows.candidate.astype(float)
    rows["rel_delta"] = (rows.delta / b.abs()).where(b != 0)
    rows["direction"] = [_direction(metrics, m) for m in rows.metric]
    binary = np.array([getattr(metrics.get(base_name(m)), "kind", None) == BINARY for m in rows.metric])
    # one tolerance per quantity: a row shown through exp (perplexity, LongPPL) carries the tolerance of the NLL
    # row just before it (mean_nll, key_nll) through exp, unless the file names the derived metric itself
    own = {k: tolerances.get(base_name(m), default).allowed(v) for k, m, v in zip(rows.index, rows.metric, b)}
    rows["tolerance"] = [
        (math.exp(math.log(v) + own[k - 1]) - v if d and m not in tolerances else own[k]) + FLOAT_TOLERANCE.allowed(v)
        for k, m, v, d in zip(rows.index, rows.metric, b, rows.derived)
    ]
    judged = rows.direction != 0
    lower_is_worse = rows.direction > 0
    rows["p_worse"] = np.where(judged, np.where(lower_is_worse, rows.p_less, rows.p_greater), np.nan)
    p_better = np.where(judged, np.where(lower_is_worse, rows.p_greater, rows.p_less), np.nan)
    family_rows = (judged & ~rows.derived).to_numpy()  # a perplexity row is its mean_nll row's test, not another one
    alpha = 1 - confidence
    adjusted, better = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    units = [None if not rows.paired[k] else _oriented(rows.unit_data[k], rows.direction[k]) for k in range(len(rows))]
    picked = np.flatnonzero(family_rows)
    floors = rows.p_floor.to_numpy()[picked]
    adjusted[picked], procedure = family.adjust(
        rows.p_worse.to_numpy()[picked], correction, [units[k] for k in picked], floors, alpha
    )
    flipped = [None if u is None else (u[0], -u[1], u[2]) for u in units]
    better[picked], _ = family.adjust(p_better[picked], correction, [flipped[k] for k in picked], floors, alpha)
    for k in np.flatnonzero(rows.derived.to_numpy()):  # derived rows follow the row they come from
        adjusted[k], better[k] = adjusted[k - 1], better[k - 1]
    rows["p_adjusted"] = adjusted
    worse = -rows.direction * rows.delta
    seen_worse, seen_better = adjusted < alpha, better < alpha
    rows["beyond_noise"] = np.where(judged, seen_worse | seen_better, rows.beyond_noise)
    broke = c.isna() & b.notna()  # a metric that turned NaN cannot be trusted to have held up
    rows["regression"] = judged & ((worse > rows.tolerance) & (seen_worse | strict) | broke)
    rows["improvement"] = judged & (-worse > rows.tolerance) & (seen_better | strict)
    m = max(int(family_rows.sum()), 1)
    mdd, notes = [], []
    for r, is_binary in zip(rows.itertuples(), binary):
        value, note = _power(r, alpha / m if correction != "none" else alpha, power, detect, is_binary)
        mdd.append(value)
        notes.append(note if r.direction else "")
    rows["minimal_detectable"], rows["power_note"] = mdd, notes
    return rows[ROW_COLUMNS].reset_index(drop=True), procedure


def _direction(metrics: dict[str, Metric], name: str) -> int:
    """+1 higher is better, -1 lower, 0 reported only; a metric shown through exp follows its source."""
    declared = metrics.get(base_name(name)) or exp_source(metrics, name)
    return int(declared.direction) if declared else 0


def _oriented(unit_data, direction: int):
    """Per-unit sums oriented so that positive is worse."""
    if unit_data is None:
        return None
    ids, sums, counts = unit_data
    return ids, -direction * np.asarray(sums, dtype=float), counts


def _power(row, level: float, power: float, detect: float | None, binary: bool = False) -> tuple[float, str]:
    """(minimal detectable worsening at ``power``, note): the note says why a cell is underpowered."""
    from evalkit.report import family

    if row.p_floor >= level:
        return math.nan, f"cannot reach p < {level:.2g} with {row.units} units (exact floor {row.p_floor:.2g})"
    se = row.se
    if binary or (0 <= row.baseline <= 1 and row.p_floor > 0):
        se = max(
            se if math.isfinite(se) else 0.0,
            family.binary_unit_sd(row.baseline, 0.0, row.units) / math.sqrt(max(row.units, 1)),
        )
    value = family.minimal_detectable(se, row.units, level, power)
    if row.derived and math.isfinite(value):  # perplexity: the NLL's detectable shift through exp
        value = row.baseline * math.expm1(value)
    if not math.isfinite(value):
        return value, f"no power estimate with {row.units} unit(s)"
    if detect is not None and value > detect and not row.derived:
        return value, f"detects only {value:.3g} at {power:.0%} power, above --detect {detect:g}"
    return value, ""


def _power_check(weak: pd.DataFrame, judged: int, require: bool, detect: float | None) -> dict:
    if weak.empty:
        return {
            **_check(
                "power",
                None,
                f"every one of {judged} judged cells can detect "
                + (f"a worsening of {detect:g}" if detect is not None else "a worsening"),
            ),
            "warning": False,
        }
    cells = ", ".join(
        f"{r.attention}@{r.context_length} {r.metric} ({r.power_note})" for r in weak.head(6).itertuples()
    )
    text = (
        f"{len(weak)} of {judged} judged cells underpowered: {cells}"
        + (" …" if len(weak) > 6 else "")
        + "; size the grid with `evalkit plan`"
    )
    return {
        "check": "power",
        "passed": not require,
        "reason": text + ("" if require else " (warning; --require-power fails)"),
        "warning": not require,
    }


def _describe_tolerance(default: Tolerance) -> str:
    user = (
        f"{default.absolute:g}"
        if default.absolute
        else f"{default.relative:g} × |baseline|"
        if default.relative
        else "0"
    )
    return f"{user} + float floor ({FLOAT_TOLERANCE.absolute:g} + {FLOAT_TOLERANCE.relative:g} × |baseline|)"


# -- effective context length --------------------------------------------------------------------


def _effective_lengths(
    b: pd.DataFrame, c: pd.DataFrame, kind: str, value: float, confidence: float, metrics: dict[str, Metric] | None
) -> pd.DataFrame:
    """Each side's effective context length from the first declared metric whose curve gives it (as in
    summary.csv: RULER's average over tasks, each task once; the needle's accuracy pooled)."""
    declared = next(
        (
            m
            for m in (metrics or {}).values()
            if m.effective_length and m.name in set(b.metric) and m.name in set(c.metric)
        ),
        None,
    )
    if declared is None:
        return pd.DataFrame()
    metric, groups = declared.name, declared.effective_length
    out = []
    for side, frame in (("baseline", b), ("candidate", c)):
        for (attention, variant), part in frame[frame.metric == metric].groupby(["attention", "variant"], sort=True):
            lengths, est = [], []
            for length, cell in part.groupby("context_length", sort=True):
                lengths.append(int(length))
                if groups != "pooled" and groups in cell.columns:  # each group (RULER task) counts once
                    e = stats.mean_of_means(cell.value, cell[groups], cell.unit, confidence)
                    est.append(stats.clipped(e, *declared.range))
                else:
                    est.append(stats.of_metric(declared, cell.value, cell.unit, confidence))
            thr = value if kind == "abs" else value * est[0].value
            low, high = stats.effective_length_interval(lengths, [e.ci_low for e in est], [e.ci_high for e in est], thr)
            out.append(
                {
                    "side": side,
                    "attention": attention,
                    "variant": variant,
                    "metric": metric,
                    "threshold": thr,
                    "effective_length": stats.effective_length(lengths, [e.value for e in est], thr),
                    "pessimistic": low,
                    "optimistic": high,
                    "lengths": ",".join(map(str, lengths)),
                }
            )
    frame = pd.DataFrame(out)
    for column in ("effective_length", "pessimistic", "optimistic"):  # lengths, or none when even the shortest fails
        frame[column] = frame[column].astype("Int64")
    return frame


def _length_checks(lengths: pd.DataFrame, strict: bool) -> list[dict]:
    """A drop in effective length fails when it is beyond noise: the candidate's optimistic end below the
    baseline's pessimistic end (--strict: the candidate's point below the baseline's). None counts as 0."""
    checks = []
    sides = {side: part.set_index("attention") for side, part in lengths.groupby("side")}
    for attention, base in sides.get("baseline", pd.DataFrame()).iterrows():
        if attention not in sides.get("candidate", pd.DataFrame()).index:
            continue
        cand = sides["candidate"].loc[attention]
        num = lambda v: 0 if pd.isna(v) else int(v)  # noqa: E731
        b_end, c_end = (
            (num(base.effective_length), num(cand.effective_length))
            if strict
            else (num(base.pessimistic), num(cand.optimistic))
        )
        text = f"baseline {base.variant} {_ecl(base)}, candidate {cand.variant} {_ecl(cand)}"
        checks.append(
            _check(f"effective length {attention}", f"dropped beyond noise: {text}" if c_end < b_end else None, text)
        )
    return checks


def _ecl(row) -> str:
    return effective_length_text(row.effective_length, row.pessimistic, row.optimistic)


# -- reports --------------------------------------------------------------------------------------


def _status(row) -> str:
    return (
        "❌ regression" if row.regression else "✅ improvement" if row.improvement else "~" if row.beyond_noise else ""
    )


def _display(c: Comparison) -> pd.DataFrame:
    """Cells as strings: regressions first, then every other cell by variant, length and metric."""
    rows = c.rows
    order = pd.concat([c.regressions, rows[~rows.regression]])
    return pd.DataFrame(
        {
            "": [_status(r) for r in order.itertuples()],
            "attention": order.attention,
            "length": order.context_length,
            "metric": order.metric,
            "baseline": order.baseline.map(lambda v: fmt(v, ".4g")),
            "candidate": order.candidate.map(lambda v: fmt(v, ".4g")),
            "delta": order.delta.map(lambda v: fmt(v, "+.3g")),
            f"{c.summary['confidence']:.0%} CI": [
                interval(lo, hi, "+.3g") for lo, hi in zip(order.ci_low, order.ci_high)
            ],
            "p (one-sided)": order.p_worse.map(lambda v: fmt(v, ".2g")),
            "adj. p": order.p_adjusted.map(lambda v: fmt(v, ".2g")),
            "detectable": [
                ("–" if not d else fmt(v, ".3g")) if not note else "⚠ " + fmt(v, ".3g")
                for v, d, note in zip(order.minimal_detectable, order.direction, order.power_note)
            ],
            "test": order.test.map(_short_test),
            "pairs" if order.paired.all() else "n": order.pairs.astype(str),
            "units": order.units.astype(str),
            "beyond noise": order.beyond_noise.map({True: "yes", False: "no"}),
        }
    ).astype(str)


def _lengths_display(c: Comparison) -> pd.DataFrame:
    ls = c.lengths
    return pd.DataFrame(
        {
            "side": ls.side,
            "attention": ls.variant,
            "effective length": ls.effective_length.map(length_text),
            "interval": [_ecl(r).split(" ", 1)[1] for r in ls.itertuples()],
            "threshold": ls.threshold.map(lambda v: fmt(v, ".3g")),
            "lengths tested": ls.lengths,
        }
    ).astype(str)


def _headline(c: Comparison) -> str:
    s, failed = c.summary, len(c.failed_checks)
    parts = [f"{s['regressions']} regression{'s' * (s['regressions'] != 1)}"] if s["regressions"] else []
    parts += [f"{failed} failed check{'s' * (failed != 1)}"] if failed else []
    itself = " (a run compared with itself)" if s.get("self_comparison") else ""
    return f"{'❌' if c.exit_code else '✅'} evalkit compare: " + (", ".join(parts) or "no regression") + itself


def _sides(c: Comparison) -> str:
    s = c.summary
    side = lambda k: f"`{s[k]}`" + (f" ({s[k + '_select']})" if s[k + "_select"] else "") + f", model {s[k + '_model']}"  # noqa: E731
    return f"{s['task']}: baseline {side('baseline')} vs candidate {side('candidate')}."


def _method(c: Comparison) -> str:
    s = c.summary
    return (
        f"Pairing: {s['pairing']}; unit {s['unit']}; tests: {', '.join(s['tests'])}, one-sided (only worse fails). "
        f"A regression is worse by more than the tolerance ({s['tolerance']}) and beyond noise at "
        f"{s['confidence']:.0%} confidence after the family-wise correction: {s['correction']} (adj. p; raw "
        f"one-sided p beside it)"
        + (" (--strict: noise or not)." if s["strict"] else ".")
        + f" Power: 'detectable' is the smallest worsening each cell sees with {s['power']:.0%} probability"
        + " (⚠: underpowered)."
    )


def to_markdown(c: Comparison, limit: int = 50) -> str:
    s = c.summary
    parts = [
        f"## {_headline(c)}",
        "",
        _sides(c),
        "",
        _method(c),
        f"{s['cells']} cells: {s['regressions']} regressed, {s['improvements']} improved, {s['beyond_noise']} "
        f"beyond noise.",
    ]
    if c.failed_checks:
        parts += ["", "**Failed checks**", ""] + [f"- {ch['check']}: {ch['reason']}" for ch in c.failed_checks]
    warnings = [ch for ch in c.checks if ch.get("warning")]
    if warnings:
        parts += ["", "**Warnings**", ""] + [f"- ⚠ {ch['check']}: {ch['reason']}" for ch in warnings]
    if c.notes:
        parts += ["", "Notes:"] + [f"- {note}" for note in c.notes]
    if not c.lengths.empty:
        parts += [
            "",
            f"**Effective context length** (RULER: the longest length up to which {c.lengths.metric.iloc[0]} stays at "
            f"or above the threshold; interval from the accuracy intervals' ends)",
            "",
            markdown_table(_lengths_display(c)),
        ]
    return "\n".join(parts + ["", markdown_table(_display(c), limit), ""])


def to_json(c: Comparison) -> str:
    return dumps(
        {"summary": c.summary, "checks": c.checks, "effective_length": records(c.lengths), "rows": records(c.rows)}
    )


def to_junit(c: Comparison) -> str:
    task = c.summary["task"]
    cases = []
    for ch in c.checks:
        case = {"classname": f"evalkit.compare.{task}.checks", "name": ch["check"]}
        if not ch["passed"]:
            case["failure"] = f"{ch['check']}: {ch['reason']}"
        elif ch.get("warning"):
            case["system_out"] = f"warning: {ch['reason']}"
        cases.append(case)
    for row in records(c.rows):
        case = {
            "classname": f"evalkit.compare.{task}.{row['attention']}",
            "name": f"{row['metric']}@{row['context_length']}",
        }
        if row["regression"]:
            case["failure"] = (
                f"{row['metric']} went from {fmt(row['baseline'])} to {fmt(row['candidate'])} (delta "
                f"{fmt(row['delta'], '+.3g')}, {c.summary['confidence']:.0%} CI "
                f"{interval(row['ci_low'], row['ci_high'], '+.3g')}, one-sided p {fmt(row['p_worse'], '.2g')}, "
                f"adjusted p {fmt(row['p_adjusted'], '.2g')} ({c.summary['correction']}), "
                f"tolerance {fmt(row['tolerance'], '.3g')}; {row['test']})"
            )
            case["text"] = dumps(row)
        elif row["direction"]:
            case["system_out"] = (
                f"one-sided p {fmt(row['p_worse'], '.2g')}, adjusted p {fmt(row['p_adjusted'], '.2g')} "
                f"({c.summary['correction']}); minimal detectable worsening "
                f"{fmt(row['minimal_detectable'], '.3g')}"
                + (f"; underpowered: {row['power_note']}" if row["power_note"] else "")
            )
        cases.append(case)
    return junit_xml(f"evalkit compare {task}", cases)


def to_rich_table(c: Comparison, limit: int = 50):
    from rich.console import Group
    from rich.text import Text

    table = _display(c)
    parts = [
        Text(_headline(c), style="bold red" if c.exit_code else "bold green"),
        Text(_sides(c)),
        Text(_method(c)),
        checks_table(c.checks, "checks"),
    ]
    if not c.lengths.empty:
        ls = _lengths_display(c)
        parts.append(rich_table(ls, "effective context length", ls.side == "", ls.side == "", limit=len(ls)))
    parts.append(
        rich_table(
            table,
            f"{c.summary['regressions']} regressed, {c.summary['improvements']} improved of {c.summary['cells']} cells",
            table[""].str.startswith("❌"),
            table[""].str.startswith("✅"),
            limit,
            caption="\n".join(c.notes) or None,
        )
    )
    return Group(*parts)
