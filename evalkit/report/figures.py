"""``evalkit plot``: length-generalization figures across run folders, drawn truthfully.

- One line per (run, attention variant), never merged silently: two runs of one model are two
  lines. Labels: ``--label`` (one per run), else the model name, made unique with the run folder.
- The numbers are summary.csv's (each run's own task ``summarize`` made them; a folder without one
  gets it from the rows): perplexity is exp of the mean NLL with exp of its interval, and a figure
  and its run's summary never disagree.
  A ``--metric`` the summary lacks gets the same statistics module over the rows (a sample's rows
  averaged first, the task's independent unit as the cluster).
- ``--aggregate seeds`` makes runs that differ only in their seed one line: the mean of the
  per-seed values with a t interval from their spread (perplexity: over the per-seed mean NLLs,
  then exp). Without it every seed is its own line.
- Every line draws its 95% band; the training length of each model is marked; colours, sizes and
  text follow the one style of evalkit.report.draw, so these figures look like a run's own; the
  plotted points with their intervals go beside each figure as CSV (same name, .csv). PNG and SVG
  by default, PDF on request.
- ``redraw_runs`` draws a run's own figures again from its tables (e.g. as PDF for a paper).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from evalkit.core.errors import ConfigError, ResultsError
from evalkit.core.metrics import BINARY, Metric, by_column, exp_source
from evalkit.report import draw, stats
from evalkit.store.run_folder import Run, load_run, training_length

# Settings that do not change what a run measures: runs differing only in these and the seed are seeds of one line.
NOT_MEASURED = {"seed", "out", "resume", "quiet", "device", "device_map", "batch_tokens", "prefix_cache"}
POINT_COLUMNS = ["attention", "context_length", "value", "ci_low", "ci_high", "n", "units"]


def settings(run: Run) -> str:
    """What a run measured, seed aside: equal settings make runs seeds of one experiment."""
    config = {k: v for k, v in run.manifest.get("config", {}).items() if k not in NOT_MEASURED}
    return json.dumps(
        {
            "task": run.task,
            "config": config,
            "options": run.manifest.get("task_options"),
            "hash": (run.manifest.get("model") or {}).get("content_hash"),
        },
        sort_keys=True,
        default=str,
    )


def _interval_columns(summary: pd.DataFrame) -> set[str]:
    return {c for c in summary if f"{c}_ci_low" in summary}


def _summary(run: Run) -> pd.DataFrame:
    """summary.csv's numbers (the task's ``summarize`` where a folder has none), empty if neither."""
    return run.summary if run.summary is not None else pd.DataFrame()


def headline_metric(run: Run) -> str:
    """The row metric a reader looks for first (it names the figure file): the first the task declares
    headline that the run has, else the run's first metric."""
    have = set(run.frame.metric) if len(run.frame) else set()
    found = [m.name for m in run.metrics.values() if m.headline and m.name in have]
    return found[0] if found else str(run.frame.metric.iloc[0])


def summary_column(metrics: dict[str, Metric], metric: str) -> str:
    """The summary.csv column that shows a row metric (greedy_correct -> accuracy)."""
    return metrics[metric].column if metric in metrics else metric


def axis(metrics: dict[str, Metric], name: str) -> tuple[str, tuple[float, float] | None, bool]:
    """(y label, the values' bounds with a margin that keeps markers at the ends whole, whether to show
    the whole range) for a row metric or summary column, from its declaration: a 0/1 metric spans its
    whole range (an accuracy reads against 0 and 1); other bounded ones zoom to their data (attention
    mass on a needle lies in 0-0.1, where 0-1 would flatten every difference)."""
    declared = metrics.get(name) or by_column(metrics, name)
    if declared is None:
        return name.replace("_", " "), None, False
    low, high = declared.range
    margin = 0.03 * (high - low) if math.isfinite(high - low) else 0.0
    return declared.axis_label, (low - margin, high + margin), declared.kind == BINARY


def points(run: Run, metric: str) -> pd.DataFrame | None:
    """(attention, context_length) -> value with its 95% interval, n and units; None if the run lacks the metric."""
    declared, summary = run.metrics, _summary(run)
    column = summary_column(declared, metric)
    if f"{column}_ci_low" in summary:
        rows = summary[pd.to_numeric(summary.context_length, errors="coerce").notna()]
        # one point per variant and length: where parts come first (RULER's tasks), the last row, their average
        rows = rows.drop_duplicates(["attention", "context_length"], keep="last")
        out = rows.rename(columns={column: "value", f"{column}_ci_low": "ci_low", f"{column}_ci_high": "ci_high"})
        return out.assign(context_length=out.context_length.astype(int)).reindex(columns=POINT_COLUMNS)
    rows = run.rows[run.rows.metric == metric]
    if rows.empty:
        return None
    # a sample's rows (bins, heads) are one value; the task's independent unit is the cluster
    task = run.task_plugin
    per_sample = [c for c in ("attention", *task.sample_columns(), "seed") if c in rows.columns]
    rows = rows.groupby(per_sample, as_index=False, sort=False, dropna=False)["value"].mean()
    # a declared 0/1 metric is a proportion (Wilson); anything else a mean (t), even where its values happen
    # to be 0/1 (ranks all 1), cut to the range its kind allows
    found = declared.get(metric)
    kind = "proportion" if found is not None and found.kind == BINARY else "mean"
    out = stats.estimates(rows, ["attention", "context_length"], task.unit_columns(task.options), kind=kind)
    if found is not None:
        low, high = found.range
        out = out.assign(ci_low=out.ci_low.clip(low, high), ci_high=out.ci_high.clip(low, high))
    return out.assign(context_length=out.context_length.astype(int))[POINT_COLUMNS]


def across_seeds(runs: list[Run], metric: str) -> pd.DataFrame | None:
    """One line from runs that differ only in seed: the mean of the per-seed values, its t interval
    from their spread (each seed one unit)."""
    column = summary_column(runs[0].metrics, metric)
    source = exp_source(runs[0].metrics, column)  # perplexity is exp of mean_nll: the log is averaged, as in a run
    log = source.name if source is not None and f"{column}_ci_low" in _summary(runs[0]) else None
    per_seed = [p.assign(seed=run.seed) for run in runs if (p := points(run, log or metric)) is not None]
    if not per_seed:
        return None
    data = pd.concat(per_seed, ignore_index=True)
    out = []
    for (attention, length), part in data.groupby(["attention", "context_length"], sort=False):
        e = stats.mean(part.value)
        e = e.exp() if log else e
        out.append((attention, int(length), e.value, e.ci_low, e.ci_high, e.n, e.units))
    return pd.DataFrame(out, columns=POINT_COLUMNS)


def unique_labels(names: list[str], folders: list[Path]) -> list[str]:
    """Labels made unique: a repeated name gets its run folder, then a number."""
    names = [f"{n} ({f.name})" if names.count(n) > 1 else n for n, f in zip(names, folders)]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if names.count(name) == 1 else f"{name} #{seen[name]}")
    return out


def lines(runs: list[Run], labels: list[str] | None, aggregate: bool) -> list[tuple[str, list[Run]]]:
    """(label, runs) per line source: each run alone, or under --aggregate seeds the runs that differ
    only in seed together. Labels: --label (one per run; a group takes its first run's), else the model."""
    given = dict(zip(map(id, runs), labels or []))
    groups: dict[str, list[Run]] = {}
    for k, run in enumerate(runs):
        groups.setdefault(settings(run) if aggregate else str(k), []).append(run)
    for members in groups.values():
        seeds = [str(run.seed) for run in members]
        if len(set(seeds)) < len(seeds):
            raise ConfigError(
                f"runs {', '.join(str(r.folder) for r in members)} have the same settings and seed: "
                "they are repeats, not seeds",
                "drop the repeats, or plot without --aggregate seeds",
            )
    members = list(groups.values())
    names = unique_labels([given.get(id(m[0]), m[0].model) for m in members], [m[0].folder for m in members])
    return [
        (
            name
            + (f" ({len(m)} seeds)" if len(m) > 1 else "")
            + (" (interrupted)" if any(r.interrupted for r in m) else ""),
            m,
        )
        for name, m in zip(names, members)
    ]


def plot_runs(
    folders: list[str],
    out: str,
    metric: str | None = None,
    labels: list[str] | None = None,
    aggregate: str | None = None,
    formats=("png", "svg"),
) -> list[Path]:
    """Figures of each task's headline metric (or ``metric``) against context length, with their points
    as CSV, in each of ``formats``. Against training step: ``evalkit.report.steps.plot_steps``."""
    if aggregate not in (None, "seeds"):
        raise ConfigError(
            f"bad --aggregate {aggregate!r}", "use --aggregate seeds, or leave it out for one line per run"
        )
    formats = draw.check_formats(formats)
    runs = [load_run(Path(f)) for f in folders]
    if labels and len(labels) != len(runs):
        raise ConfigError(
            f"{len(labels)} --label value(s) for {len(runs)} run folder(s)", "give one --label per run, in order"
        )
    if metric is not None:
        there = set().union(*(set(r.rows.metric) | _interval_columns(_summary(r)) for r in runs))
        if metric not in there:
            raise ResultsError(f"no run has the metric {metric!r}", f"use one of: {', '.join(sorted(there))}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task in dict.fromkeys(run.task for run in runs):
        mine = [(run, label) for run, label in zip(runs, labels or [None] * len(runs)) if run.task == task]
        name = metric or headline_metric(mine[0][0])
        series = []
        for label, members in lines(
            [r for r, _ in mine], [l for _, l in mine] if labels else None, aggregate == "seeds"
        ):
            curve = across_seeds(members, name) if len(members) > 1 else points(members[0], name)
            if curve is not None and not curve.empty:
                series.append((label, members, curve))
        if series:
            with draw.output(formats) as figures:
                csv = _figure(task, name, series, out_dir / f"{task}_{name}_vs_length", mine[0][0].metrics)
            written += figures + [csv]
    return written


def redraw_runs(folders: list[str], out: str, formats=("png",)) -> list[Path]:
    """Each run's own figures (the ones ``evalkit run`` writes to RUN/plots), drawn again from the run's
    tables into OUT/<run folder name>/, in each of ``formats``: the same functions, so the same figures."""
    formats = draw.check_formats(formats)
    written = []
    for folder in folders:
        run = load_run(Path(folder))
        if not len(run.frame):
            raise ResultsError(f"{folder} has no rows to draw", "finish the run first (evalkit run ... --resume)")
        variants = [a.get("label") or a.get("variant") for a in run.manifest.get("attention", [])]
        title = ", ".join([run.model, *filter(None, variants)])
        with draw.output(formats) as figures:
            run.task_plugin.plot(run.rows, title, Path(out) / run.folder.name)
        written += figures
    return written


def _figure(task: str, name: str, series, stem: Path, metrics: dict[str, Metric]) -> Path:
    """The figure (its files are collected by ``draw.output``) and its points as CSV; returns the CSV."""
    from evalkit.store.results import atomic_write

    ylabel, bounds, fixed = axis(metrics, name)
    fig, ax = draw.figure(height=3.3)
    table = []
    all_lengths = pd.concat([curve.context_length for _, _, curve in series])
    count = sum(curve.attention.nunique() for _, _, curve in series)
    k = 0
    for label, members, curve in series:
        for attention, line in curve.groupby("attention", sort=False):
            text = label if label == attention else f"{label} · {attention}"  # ckpt/ref/ssmax under ssmax: once
            draw.line_with_band(
                ax,
                line.context_length,
                line.value,
                line.ci_low,
                line.ci_high,
                draw.variant_colour(attention),
                draw.VARIANT_STYLES[k % len(draw.VARIANT_STYLES)],  # every line its own dash and marker
                draw.MARKERS[k % len(draw.MARKERS)],
                text,
                dodge=draw.dodge(k, count, all_lengths),
            )
            k += 1
            table.append(
                line.assign(
                    series=text,
                    runs=" ".join(str(r.folder) for r in members),
                    model=members[0].model,
                    seeds=" ".join(str(r.seed) for r in members),
                )
            )
    points_table = pd.concat(table, ignore_index=True).sort_values(["series", "context_length"], kind="stable")
    lengths = sorted(points_table.context_length.unique())
    draw.length_axis(ax, lengths)
    trains = {}
    for _label, members, _ in series:
        trains.setdefault(training_length(members[0].manifest), []).append(members[0].model)
    for row, (train, models) in enumerate(t for t in trains.items() if t[0]):
        suffix = f" ({', '.join(dict.fromkeys(models))})" if len(trains) > 1 else ""
        draw.mark_training_length(ax, lengths, train, row=row, suffix=suffix)
    draw.value_axis(
        ax,
        points_table.ci_low.fillna(points_table.value),
        points_table.ci_high.fillna(points_table.value),
        bounds,
        fixed=fixed,
        values=points_table.value,
    )
    ax.set_ylabel(ylabel)
    draw.legend(fig, title=f"run · attention ({draw.BAND_NOTE})")
    draw.title(
        fig,
        ("" if ylabel.startswith(task) else f"{task}: ") + f"{ylabel.split(' (')[0]} vs length",
        "",
        draw.n_caption(points_table.n, points_table.units),
    )
    draw.save(fig, stem.with_suffix(".png"))
    csv = stem.with_suffix(".csv")
    columns = [
        "series",
        "model",
        "attention",
        "context_length",
        "value",
        "ci_low",
        "ci_high",
        "n",
        "units",
        "seeds",
        "runs",
    ]
    atomic_write(csv, lambda tmp: points_table[columns].to_csv(tmp, index=False))
    return csv
