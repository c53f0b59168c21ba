"""``evalkit plot``: length-generalization figures across run folders, drawn truthfully.

- One line per (run, attention variant), never merged silently: two runs of one model are two
  lines. Labels: ``--label`` (one per run), else the model name, made unique with the run folder.
- The numbers are summary.csv's: each run's own task ``summarize`` computes them (perplexity is
  exp of the mean NLL with exp of its interval), so a figure and its run's summary never disagree.
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
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from evalkit.core.errors import ConfigError, ResultsError
from evalkit.report import draw, stats
from evalkit.report.runs import recorded_options

# The row metric a reader looks for first, per task (it names the figure file).
HEADLINE = {"perplexity": "perplexity", "needle": "greedy_correct", "focus": "needle_mass"}
# Row metrics whose summary column has another name.
SUMMARY_COLUMN = {"greedy_correct": "accuracy", "contains": "accuracy"}
BINARY = {"greedy_correct", "contains", "exact_match"}
# Summary columns that are exp of another: across seeds the log is averaged, as within a run.
EXP_OF = {"perplexity": "mean_nll"}
AXIS = {
    "perplexity": ("perplexity, exp(mean NLL) (lower is better)", None),
    "accuracy": ("needle retrieval accuracy", (-0.03, 1.03)),
    "needle_mass": ("attention mass on the needle (mean over heads)", (-0.02, 1.02)),
}
# Settings that do not change what a run measures: runs differing only in these and the seed are seeds of one line.
NOT_MEASURED = {"seed", "out", "resume", "quiet", "device", "device_map", "batch_tokens", "prefix_cache"}
POINT_COLUMNS = ["attention", "context_length", "value", "ci_low", "ci_high", "n", "units"]


@dataclass
class Run:
    folder: Path
    frame: pd.DataFrame
    manifest: dict
    task: object  # the run's Task, rebuilt from its manifest: its summarize() makes the numbers
    summary: pd.DataFrame

    @property
    def model(self) -> str:
        return str(self.frame.model.iloc[0]) if len(self.frame) else self.folder.name

    @property
    def seed(self):
        return self.manifest.get("seed")

    @property
    def settings(self) -> str:
        """What the run measured, seed aside: equal settings make runs seeds of one experiment."""
        config = {k: v for k, v in self.manifest.get("config", {}).items() if k not in NOT_MEASURED}
        return json.dumps(
            {
                "task": self.task.name,
                "config": config,
                "options": self.manifest.get("task_options"),
                "hash": (self.manifest.get("model") or {}).get("content_hash"),
            },
            sort_keys=True,
            default=str,
        )


def training_length(manifest: dict) -> int | None:
    """The checkpoint's own training length when it records one, else its position limit.

    A ``--train-length`` given for logn is an evaluation setting, not a fact about the model.
    """
    own = [
        a["train_length"] for a in manifest.get("attention", []) if a.get("from_checkpoint") and a.get("train_length")
    ]
    model = manifest.get("model") or {}
    return own[0] if own else model.get("training_length") or model.get("max_position_embeddings")


def load_run(folder: Path) -> Run:
    from evalkit.core.registry import get_task
    from evalkit.core.task import TaskContext

    parquet, manifest_path = folder / "results.parquet", folder / "manifest.json"
    if not parquet.is_file() or not manifest_path.is_file():
        raise ResultsError(
            f"{folder} is not a finished evalkit run (no results.parquet or manifest.json)",
            "pass run folders written by evalkit run",
        )
    frame, manifest = pd.read_parquet(parquet), json.loads(manifest_path.read_text())
    task_name = str(frame.task.iloc[0]) if len(frame) else manifest.get("config", {}).get("task")
    task_cls = get_task(task_name)
    task = task_cls(
        recorded_options(task_cls, manifest),
        TaskContext(None, None, True, manifest.get("seed", 0), training_length(manifest)),
    )
    return Run(folder, frame, manifest, task, task.summarize(frame) if len(frame) else pd.DataFrame())


def points(run: Run, metric: str) -> pd.DataFrame | None:
    """(attention, context_length) -> value with its 95% interval, n and units; None if the run lacks the metric."""
    column = SUMMARY_COLUMN.get(metric, metric)
    if f"{column}_ci_low" in run.summary:
        rows = run.summary[pd.to_numeric(run.summary.context_length, errors="coerce").notna()]
        out = rows.rename(columns={column: "value", f"{column}_ci_low": "ci_low", f"{column}_ci_high": "ci_high"})
        return out.assign(context_length=out.context_length.astype(int)).reindex(columns=POINT_COLUMNS)
    rows = run.frame[run.frame.metric == metric]
    if rows.empty:
        return None
    # a sample's rows (bins, heads) are one value; the task's independent unit is the cluster
    per_sample = [c for c in ("attention", *run.task.sample_columns(), "seed") if c in rows.columns]
    rows = rows.groupby(per_sample, as_index=False, sort=False, dropna=False)["value"].mean()
    # a 0/1 metric is a proportion (Wilson); anything else a mean (t), even where its values happen to be 0/1
    # (ranks all 1)
    kind = "proportion" if metric in BINARY else "mean"
    out = stats.estimates(rows, ["attention", "context_length"], run.task.unit_columns(run.task.options), kind=kind)
    return out.assign(context_length=out.context_length.astype(int))[POINT_COLUMNS]


def across_seeds(runs: list[Run], metric: str) -> pd.DataFrame | None:
    """One line from runs that differ only in seed: the mean of the per-seed values, its t interval
    from their spread (each seed one unit)."""
    column = SUMMARY_COLUMN.get(metric, metric)
    log = EXP_OF.get(column) if f"{column}_ci_low" in runs[0].summary else None
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
        groups.setdefault(run.settings if aggregate else str(k), []).append(run)
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
            + (" (interrupted)" if any(r.manifest.get("interrupted") for r in m) else ""),
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
        there = set().union(*(set(r.frame.metric) | {c for c in r.summary if f"{c}_ci_low" in r.summary} for r in runs))
        if metric not in there:
            raise ResultsError(f"no run has the metric {metric!r}", f"use one of: {', '.join(sorted(there))}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task in dict.fromkeys(run.task.name for run in runs):
        mine = [(run, label) for run, label in zip(runs, labels or [None] * len(runs)) if run.task.name == task]
        name = metric or HEADLINE.get(task, str(mine[0][0].frame.metric.iloc[0]))
        series = []
        for label, members in lines(
            [r for r, _ in mine], [l for _, l in mine] if labels else None, aggregate == "seeds"
        ):
            curve = across_seeds(members, name) if len(members) > 1 else points(members[0], name)
            if curve is not None and not curve.empty:
                series.append((label, members, curve))
        if series:
            with draw.output(formats) as figures:
                csv = _figure(task, name, series, out_dir / f"{task}_{name}_vs_length")
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
            run.task.plot(run.frame, title, Path(out) / run.folder.name)
        written += figures
    return written


# Columns drawn on their whole range (an accuracy reads against 0 and 1); other bounded ones (AXIS) zoom to
# their data: attention mass on a needle lies in 0-0.1, where 0-1 would flatten every difference.
FIXED_RANGE = {"accuracy"}


def _figure(task: str, name: str, series, stem: Path) -> Path:
    """The figure (its files are collected by ``draw.output``) and its points as CSV; returns the CSV."""
    from evalkit.store.results import atomic_write

    column = SUMMARY_COLUMN.get(name, name)
    ylabel, bounds = AXIS.get(column, (name.replace("_", " "), None))
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
        fixed=column in FIXED_RANGE,
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
