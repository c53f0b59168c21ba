"""Baseline vs candidate run: the CI regression gate behind ``evalkit compare BASE NEW``.

Both runs' tidy rows are joined on their keys (attention, context_length, the task's key columns,
metric; never run_id, model or provenance) and aggregated to the comparison level:

- ``summary``: one cell per (attention, context_length, metric), the mean over samples of the
  task's headline metrics (per-position ``nll`` curves are too fine and are left out);
- ``rows``: every joined row.

A cell regresses when its change in the metric's bad direction exceeds the tolerance. Each
summary cell also gets a 95% interval on the difference (Newcombe's Wilson-score interval for 0/1
metrics, a seeded bootstrap otherwise, paired when both runs hold the same samples), so a reader
can tell a real drop from run-to-run noise. Regressions decide the exit code; noise is reported.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from evalkit.errors import ConfigError, ResultsError

METRIC_DIRECTIONS: dict[str, int] = {
    **dict.fromkeys(["nll", "mean_nll", "perplexity", "entropy", "entropy_norm", "needle_rank", "answer_rank"], -1),
    **dict.fromkeys(["greedy_correct", "accuracy", "answer_logprob", "answer_mean_logprob", "needle_mass",
                     "max_weight", "top1_in_needle", "exact_match", "contains"], +1),
}  # +1: higher is better, -1: lower is better; any other metric is reported, never a regression
HEADLINE_METRICS = {  # what the summary level compares; a plugin task's metrics are all compared
    "perplexity": {"mean_nll", "perplexity"},
    "needle": {"greedy_correct", "exact_match", "contains", "answer_logprob"},
    "focus": {"needle_mass", "entropy_norm", "top1_in_needle"},
}
BINARY_METRICS = {"greedy_correct", "accuracy", "exact_match", "contains", "top1_in_needle"}
# Keys that index parts of one sample (a position bin, a head), not independent samples: they are
# averaged first so that noise is estimated over whole prompts, not over correlated heads.
WITHIN_SAMPLE_KEYS = {"position_bin", "layer", "head"}
CELL = ["attention", "context_length", "metric"]
RESAMPLES, SEED = 2000, 0
ROW_COLUMNS = ["baseline", "candidate", "delta", "rel_delta", "direction", "tolerance", "regression",
               "improvement", "n", "ci_low", "ci_high", "significant"]


@dataclass(frozen=True)
class Tolerance:
    """Allowed worsening: ``absolute`` in metric units, ``relative`` as a fraction of |baseline|;
    with both, the larger allowance wins (like numpy's atol + rtol)."""

    absolute: float | None = None
    relative: float | None = None

    def allowed(self, baseline: pd.Series) -> pd.Series:
        return np.maximum(self.absolute or 0.0, (self.relative or 0.0) * baseline.abs())


@dataclass
class Comparison:
    rows: pd.DataFrame
    regressions: pd.DataFrame
    improvements: pd.DataFrame
    summary: dict
    exit_code: int


@dataclass(frozen=True)
class Run:
    folder: Path
    frame: pd.DataFrame
    task: str
    keys: tuple[str, ...]  # the task's key columns: those between context_length and metric


def load_run(folder: str | Path) -> Run:
    folder = Path(folder)
    path = folder / "results.parquet"
    if not folder.is_dir():
        raise ResultsError(f"run folder {folder} does not exist", "pass a folder written by `evalkit run ... --out DIR`")
    if not path.is_file():
        raise ResultsError(f"{folder} has no results.parquet", "pass an evalkit run folder; finish an interrupted run with --resume")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a torn or foreign file
        raise ResultsError(f"{path} cannot be read ({type(exc).__name__})", "rerun the task or restore the file") from None
    columns = list(frame.columns)
    missing = [c for c in ["task", *CELL, "value"] if c not in columns]
    if missing or frame.empty:
        what = f"lacks column(s) {', '.join(missing)}" if missing else "holds no rows"
        raise ResultsError(f"{path} {what}", "pass a folder written by `evalkit run`")
    tasks = frame["task"].dropna().unique()
    if len(tasks) != 1:
        raise ResultsError(f"{path} mixes tasks {', '.join(map(str, tasks))}", "compare runs of one task each")
    keys = columns[columns.index("context_length") + 1 : columns.index("metric")]
    return Run(folder, frame, str(tasks[0]), tuple(keys))


def summary_units(run: Run, headline: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """Per (attention, context_length, metric, sample): the sample's mean, and the sample keys."""
    frame = run.frame
    if "position_bin" in frame.columns:  # per-position curves: each sample's mean_nll row sums them up
        frame = frame[frame["position_bin"].isna()]
    wanted = HEADLINE_METRICS.get(run.task, set()) if headline else set()
    if wanted & set(frame["metric"]):
        frame = frame[frame["metric"].isin(wanted)]
    unit = [k for k in run.keys if k not in WITHIN_SAMPLE_KEYS]
    units = frame.groupby(CELL + unit, dropna=False, sort=True)["value"].mean().reset_index()
    return units, unit


def _wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    p, denom = k / n, 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def _interval(metric: str, b: np.ndarray, c: np.ndarray, paired: bool) -> tuple[float, float]:
    """95% interval on mean(c) - mean(b)."""
    if metric in BINARY_METRICS and np.isin(b, (0, 1)).all() and np.isin(c, (0, 1)).all():
        # Newcombe's hybrid score interval for a difference of proportions. It treats the runs as
        # independent, which is conservative for paired samples (they are positively correlated).
        p1, p2 = c.mean(), b.mean()
        (l1, u1), (l2, u2) = _wilson(c.sum(), len(c)), _wilson(b.sum(), len(b))
        d = p1 - p2
        return max(-1.0, d - math.hypot(p1 - l1, u2 - p2)), min(1.0, d + math.hypot(u1 - p1, p2 - l2))
    if len(b) < 2 or len(c) < 2:
        return math.nan, math.nan  # one sample: no estimate of noise
    rng = np.random.default_rng(SEED)  # seeded per cell: the same runs give the same intervals
    if paired:
        d = c - b
        boot = d[rng.integers(0, len(d), (RESAMPLES, len(d)))].mean(axis=1)
    else:
        boot = (c[rng.integers(0, len(c), (RESAMPLES, len(c)))].mean(axis=1)
                - b[rng.integers(0, len(b), (RESAMPLES, len(b)))].mean(axis=1))
    low, high = np.quantile(boot, [0.025, 0.975])
    return float(low), float(high)


def _summary_cells(base: Run, cand: Run) -> tuple[pd.DataFrame, list[str], list[str]]:
    (b_units, unit), (c_units, _) = summary_units(base), summary_units(cand)
    both = pd.concat([b_units.assign(side="b"), c_units.assign(side="c")], ignore_index=True)
    uid = both[unit].astype(str).agg("|".join, axis=1) if unit else pd.Series("", index=both.index)
    both["uid"] = uid
    cells, only_b, only_c = [], [], []
    for (attention, length, metric), part in both.groupby(CELL, sort=True):
        b = part[part.side == "b"].set_index("uid")["value"].sort_index()
        c = part[part.side == "c"].set_index("uid")["value"].sort_index()
        if b.empty or c.empty:
            (only_c if b.empty else only_b).append(f"{attention}@{length} {metric}")
            continue
        paired = b.index.equals(c.index)
        low, high = _interval(metric, b.to_numpy(float), c.to_numpy(float), paired)
        cells.append({"attention": attention, "context_length": length, "metric": metric, "baseline": b.mean(),
                      "candidate": c.mean(), "n": min(len(b), len(c)), "ci_low": low, "ci_high": high})
    return pd.DataFrame(cells), only_b, only_c


def _row_cells(base: Run, cand: Run) -> tuple[pd.DataFrame, list[str], list[str]]:
    keys = CELL[:2] + list(base.keys) + ["metric"]
    b = base.frame.groupby(keys, dropna=False)["value"].mean().rename("baseline")
    c = cand.frame.groupby(keys, dropna=False)["value"].mean().rename("candidate")
    joined = pd.merge(b.reset_index(), c.reset_index(), on=keys, how="outer", indicator=True)
    only = {side: sorted({f"{r.attention}@{r.context_length} {r.metric}" for r in part.itertuples()})
            for side, part in joined[joined._merge != "both"].groupby("_merge", observed=True)}
    cells = joined[joined._merge == "both"].drop(columns="_merge").assign(n=1, ci_low=math.nan, ci_high=math.nan)
    return cells.reset_index(drop=True), only.get("left_only", []), only.get("right_only", [])


def _describe(frame: pd.DataFrame) -> str:
    """softmax@1024,2048; ssmax@4096"""
    pairs = frame[CELL[:2]].drop_duplicates().sort_values(CELL[:2])
    return "; ".join(f"{a}@{','.join(str(n) for n in part.context_length)}" for a, part in pairs.groupby("attention"))


def compare_runs(baseline: str | Path, candidate: str | Path, tolerance: float | None = None, relative: bool = False,
                 metric_tolerances: dict[str, Tolerance] | None = None, level: str = "summary") -> Comparison:
    if level not in ("summary", "rows"):
        raise ConfigError(f"unknown comparison level {level!r}", "use summary or rows")
    tolerances = dict(metric_tolerances or {})
    default = Tolerance(relative=tolerance or 0.0) if relative else Tolerance(absolute=tolerance or 0.0)
    for name, tol in [("default", default), *tolerances.items()]:
        if any(v is not None and (v < 0 or not math.isfinite(v)) for v in (tol.absolute, tol.relative)):
            raise ConfigError(f"tolerance for {name} must be a finite number >= 0", "e.g. --tolerance 0.01")
    base, cand = load_run(baseline), load_run(candidate)
    if base.task != cand.task:
        raise ConfigError(f"the runs are of different tasks: baseline {base.task}, candidate {cand.task}",
                          "compare two runs of the same task")
    if set(base.keys) != set(cand.keys):
        raise ConfigError(f"the runs have different key columns: baseline {list(base.keys)}, candidate {list(cand.keys)}",
                          "compare runs made by the same evalkit version")
    common = base.frame[CELL[:2]].drop_duplicates().merge(cand.frame[CELL[:2]].drop_duplicates())
    if common.empty:
        raise ConfigError(f"no common (attention, context_length): baseline has {_describe(base.frame)}; "
                          f"candidate has {_describe(cand.frame)}", "run the candidate on the baseline's variants and lengths")
    cells, only_b, only_c = (_summary_cells if level == "summary" else _row_cells)(base, cand)
    if cells.empty:
        raise ConfigError(f"no common metric: baseline has {sorted(set(base.frame.metric))}; candidate has "
                          f"{sorted(set(cand.frame.metric))}", "compare runs made with the same task options")

    rows = cells.copy()
    b, c = rows["baseline"].astype(float), rows["candidate"].astype(float)
    rows["delta"] = c - b
    rows["rel_delta"] = (rows["delta"] / b.abs()).where(b != 0)
    rows["direction"] = rows["metric"].map(METRIC_DIRECTIONS).fillna(0).astype(int)
    rows["tolerance"] = 0.0
    for metric, index in rows.groupby("metric").groups.items():
        rows.loc[index, "tolerance"] = tolerances.get(metric, default).allowed(b[index])
    # A change smaller than float rounding (1e-12 relative) is "no change", whatever the tolerance.
    slack = 1e-12 * np.maximum(1.0, b.abs())
    better = rows["direction"] * rows["delta"]
    judged = rows["direction"] != 0
    broke = c.isna() & b.notna()  # a metric that turned NaN cannot be trusted to have held up
    rows["regression"] = judged & ((-better > rows["tolerance"] + slack) | broke)
    rows["improvement"] = judged & (better > rows["tolerance"] + slack)
    rows["significant"] = (rows["ci_low"] > 0) | (rows["ci_high"] < 0)
    rows = rows[[col for col in cells.columns if col not in ROW_COLUMNS] + ROW_COLUMNS].reset_index(drop=True)

    regressions, improvements = rows[rows.regression], rows[rows.improvement]
    models = {side: sorted(map(str, run.frame["model"].dropna().unique())) if "model" in run.frame else []
              for side, run in (("baseline", base), ("candidate", cand))}
    exit_code = int(not regressions.empty)
    summary = {"task": base.task, "level": level, "baseline": str(baseline), "candidate": str(candidate),
               "baseline_model": ", ".join(models["baseline"]), "candidate_model": ", ".join(models["candidate"]),
               "cells": len(rows), "regressions": len(regressions),
               "significant_regressions": int(regressions.significant.sum()), "improvements": len(improvements),
               "baseline_only": only_b, "candidate_only": only_c, "exit_code": exit_code}
    return Comparison(rows, regressions, improvements, summary, exit_code)


# -- reports: markdown for a pull-request comment, JSON, JUnit XML for CI, rich for the terminal ----------

def fmt(value, spec: str = ".5g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    return format(value, spec) if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) else str(value)


def _status(row) -> str:
    return "❌ regression" if row.regression else "✅ improvement" if row.improvement else "" if row.delta == 0 else "~"


def _display(c: Comparison) -> pd.DataFrame:
    """Rows as strings, regressions first, then improvements, then the rest."""
    rows = c.rows
    order = pd.concat([c.regressions, c.improvements, rows[~rows.regression & ~rows.improvement]])
    keys = [col for col in rows.columns if col not in CELL and col not in ROW_COLUMNS]
    return pd.DataFrame({
        "": [_status(r) for r in order.itertuples()],
        "attention": order.attention, "length": order.context_length,
        **({"keys": order[keys].apply(lambda r: ",".join(f"{k}={fmt(v)}" for k, v in r.items()), axis=1)} if keys else {}),
        "metric": order.metric, "baseline": order.baseline.map(fmt), "candidate": order.candidate.map(fmt),
        "delta": order.delta.map(lambda v: fmt(v, "+.3g")), "rel": order.rel_delta.map(lambda v: fmt(v, "+.2%")),
        "tolerance": order.tolerance.map(lambda v: fmt(v, ".3g")),
        "95% CI": [f"[{fmt(lo, '+.3g')}, {fmt(hi, '+.3g')}]" if not math.isnan(lo) else "–"
                   for lo, hi in zip(order.ci_low, order.ci_high)],
        "beyond noise": order.significant.map({True: "yes", False: "no"}),
    }).astype(str)


def markdown_table(table: pd.DataFrame, limit: int = 50) -> str:
    shown = table.head(limit)
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, shown.columns)) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in shown.itertuples(index=False)]
    if len(table) > limit:
        lines.append(f"\n_{len(table) - limit} more rows omitted; the JSON and JUnit reports hold them all._")
    return "\n".join(lines)


def to_markdown(c: Comparison, limit: int = 50) -> str:
    s = c.summary
    head = f"## {'❌' if c.exit_code else '✅'} evalkit compare: " + (
        f"{s['regressions']} regression{'s' * (s['regressions'] != 1)}" if c.exit_code else "no regression")
    line = (f"{s['task']} ({s['level']} level): {s['cells']} cells compared, {s['regressions']} regressed "
            f"({s['significant_regressions']} beyond run-to-run noise), {s['improvements']} improved. "
            f"Baseline `{s['baseline']}` vs candidate `{s['candidate']}`.")
    parts = [head, "", line]
    for side in ("baseline", "candidate"):
        if s[f"{side}_only"]:
            parts.append(f"\nOnly in the {side} (not compared): {', '.join(s[f'{side}_only'][:20])}"
                         + (" …" if len(s[f"{side}_only"]) > 20 else ""))
    return "\n".join(parts + ["", markdown_table(_display(c), limit), ""])


def records(frame: pd.DataFrame) -> list[dict]:
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=lambda v: v.item() if isinstance(v, np.generic) else str(v))


def to_json(c: Comparison) -> str:
    return dumps({"summary": c.summary, "rows": records(c.rows)})


def junit_xml(suite: str, cases: list[dict]) -> str:
    """cases: dicts with classname, name, and optionally failure / skipped (a message) and text."""
    failures = sum("failure" in case for case in cases)
    skipped = sum("skipped" in case for case in cases)
    counts = {"tests": str(len(cases)), "failures": str(failures), "errors": "0", "skipped": str(skipped)}
    root = ET.Element("testsuites", name="evalkit", **counts)
    tsuite = ET.SubElement(root, "testsuite", name=suite, **counts)
    for case in cases:
        node = ET.SubElement(tsuite, "testcase", classname=case["classname"], name=case["name"], time="0")
        for kind in ("failure", "skipped"):
            if kind in case:
                ET.SubElement(node, kind, message=case[kind], type=kind).text = case.get("text", "")
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def to_junit(c: Comparison) -> str:
    keys = [col for col in c.rows.columns if col not in CELL and col not in ROW_COLUMNS]
    cases = []
    for row in records(c.rows):
        where = ",".join(f"{k}={row[k]}" for k in keys)
        case = {"classname": f"evalkit.compare.{c.summary['task']}.{row['attention']}",
                "name": f"{row['metric']}@{row['context_length']}" + (f"[{where}]" if where else "")}
        if row["regression"]:
            case["failure"] = (f"{row['metric']} went from {fmt(row['baseline'])} to {fmt(row['candidate'])} "
                               f"(delta {fmt(row['delta'], '+.3g')}, tolerance {fmt(row['tolerance'], '.3g')})")
            case["text"] = dumps(row)
        cases.append(case)
    return junit_xml(f"evalkit compare {c.summary['task']}", cases)


def rich_table(table: pd.DataFrame, title: str, bad: pd.Series, good: pd.Series, limit: int):
    from rich.table import Table

    out = Table(title=title, caption=f"{len(table) - limit} more rows omitted" if len(table) > limit else None)
    for column in table.columns:
        out.add_column(column, justify="right" if column not in ("", "attention", "metric", "keys", "gate", "reason") else "left")
    for row, is_bad, is_good in list(zip(table.itertuples(index=False), bad, good))[:limit]:
        out.add_row(*row, style="red" if is_bad else "green" if is_good else None)
    return out


def to_rich_table(c: Comparison, limit: int = 50):
    table = _display(c)
    bad = table[""].str.startswith("❌")
    s = c.summary
    return rich_table(table, f"{s['task']}: {s['regressions']} regressed, {s['improvements']} improved of {s['cells']}",
                      bad, table[""].str.startswith("✅"), limit)
