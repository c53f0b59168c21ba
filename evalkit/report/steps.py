"""``evalkit plot OUT --x step``: metrics against training step, one line per (series, variant).

A figure per task and metric with one panel per context length (the x axis is the training
step; each line a series of checkpoints under an attention variant, with its 95% band), and a
figure of the effective context length against step where the task has one (its band: the
lengths the accuracy intervals' ends give, ``stats.effective_length_interval``). The numbers are
each run's own summary (``report.figures.points``: the task's ``summarize``), so a point here
is the number in that run's summary.csv. The plotted points go beside each figure as CSV.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from evalkit.core.errors import ResultsError
from evalkit.core.metrics import of_task
from evalkit.report import draw
from evalkit.report.figures import axis, headline_metric, points, summary_column
from evalkit.report.render import NO_LENGTH
from evalkit.store.run_folder import load_run, run_folders

EFFECTIVE = ("effective_length", "effective_length_ci_low", "effective_length_ci_high")
COLUMNS = ["task", "series", "attention", "context_length", "step", "value", "ci_low", "ci_high", "n", "units", "run"]


def step_points(folders: list[str], metric: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-length points, effective-length points) of every tagged run below ``folders``."""

    per_length, effective = [], []
    for folder in folders:
        for run_folder in tagged_runs(folder):
            run = load_run(run_folder)
            task = run.task
            name = metric or headline_metric(run)
            curve = points(run, name)
            base = {
                "task": task,
                "series": run.manifest.get("series") or run.model,
                "step": int(run.manifest["step"]),
                "run": str(run_folder),
                "metric": summary_column(run.metrics, name),
                "train_length": (run.manifest.get("model") or {}).get("training_length"),
            }  # recorded, not the position limit
            if curve is not None and not curve.empty:
                per_length.append(curve.assign(**base))
            if metric is None and run.summary is not None and "effective_length" in run.summary:
                rows = run.summary[run.summary.context_length.astype(str) == "all"]
                for row in rows.itertuples(index=False):
                    row = row._asdict()
                    # no tested length at or above the threshold: 0 tokens, drawn at the axis
                    values = [float(row[c]) if _finite(row.get(c)) else 0.0 for c in EFFECTIVE]
                    effective.append(
                        {
                            **base,
                            "metric": "effective_length",
                            "attention": row["attention"],
                            "context_length": "all",
                            "value": values[0],
                            "ci_low": values[1],
                            "ci_high": values[2],
                            "n": row.get("n"),
                            "units": row.get("units"),
                            "threshold": row.get("threshold"),
                        }
                    )
    if not per_length and not effective:
        raise ResultsError(
            f"no run below {', '.join(folders)} has the metric {metric!r}",
            "leave --metric out, or pick one the runs have",
        )
    return (pd.concat(per_length, ignore_index=True) if per_length else pd.DataFrame(), pd.DataFrame(effective))


def plot_steps(folders: list[str], out: str, metric: str | None = None) -> list[Path]:
    """Figures (PNG, SVG, CSV) of each task's headline metric (or ``metric``) and effective length vs step."""
    per_length, effective = step_points(folders, metric)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for task in dict.fromkeys(list(per_length.get("task", [])) + list(effective.get("task", []))):
        if len(per_length):
            part = per_length[per_length.task == task]
            if len(part):
                written += _length_panels(task, part, out_dir / f"{task}_{part.metric.iloc[0]}_vs_step")
        if len(effective):
            part = effective[effective.task == task]
            if len(part):
                written += _effective_figure(task, part, out_dir / f"{task}_effective_length_vs_step")
    return written


def _line_label(series: str, attention: str, all_series: list[str]) -> str:
    if len(all_series) == 1 or series == attention:
        return attention if len(all_series) == 1 else series
    return f"{series} · {attention}"


def _draw_lines(ax, part: pd.DataFrame, all_series: list[str]) -> None:
    for _k, ((series, attention), line) in enumerate(part.groupby(["series", "attention"], sort=True)):
        style = draw.VARIANT_STYLES[all_series.index(series) % len(draw.VARIANT_STYLES)]
        marker = draw.MARKERS[all_series.index(series) % len(draw.MARKERS)]
        draw.line_with_band(
            ax,
            line.step,
            line.value,
            line.ci_low,
            line.ci_high,
            draw.variant_colour(attention),
            style,
            marker,
            _line_label(series, attention, all_series),
        )


def _length_panels(task: str, part: pd.DataFrame, stem: Path) -> list[Path]:
    column = part.metric.iloc[0]
    ylabel, bounds, fixed = axis(of_task(task), column)
    lengths = sorted(int(n) for n in part.context_length.unique())
    all_series = sorted(part.series.unique())
    columns = min(3, len(lengths))
    rows = math.ceil(len(lengths) / columns)
    plt = draw.pyplot()
    fig, axes = plt.subplots(
        rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False, sharex=True, sharey=True
    )
    train = part.train_length.dropna()
    train = int(train.iloc[0]) if len(train) else None
    for ax, length in zip(axes.flat, lengths):
        ax.grid(True, alpha=0.3)
        _draw_lines(ax, part[part.context_length == length], all_series)
        factor = f" ({length / train:g}x training length)" if train else ""
        ax.set_title(f"{draw.length_label(length)} tokens{factor}", fontsize=9)
        if fixed:
            ax.set_ylim(*bounds)
    for ax in list(axes.flat)[len(lengths) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    axes.flat[0].legend(fontsize=7)
    caption = draw.n_caption(part.n, part.units)
    fig.suptitle(
        f"{task}: {column} vs training step, per context length (95% bands)" + (f"; {caption}" if caption else ""),
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, stem, part)


def _effective_figure(task: str, part: pd.DataFrame, stem: Path) -> list[Path]:
    fig, ax = draw.figure(7.5, 4.5)
    all_series = sorted(part.series.unique())
    _draw_lines(ax, part, all_series)
    tested = sorted({int(n) for run in part.run.unique() for n in _tested_lengths(run)})
    if tested:
        ax.set_yscale("symlog", base=2, linthresh=max(1, tested[0]))
        ax.set_yticks([0, *tested])
        ax.set_yticklabels([NO_LENGTH, *[draw.length_label(n) for n in tested]])
    train = part.train_length.dropna()
    if len(train):
        ax.axhline(int(train.iloc[0]), color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            "training length",
            (part.step.min(), int(train.iloc[0])),
            fontsize=7,
            color="grey",
            xytext=(2, 2),
            textcoords="offset points",
        )
    threshold = part.threshold.dropna()
    ax.set_xlabel("training step")
    ax.set_ylabel("effective context length (tokens)")
    level = f" {threshold.iloc[0]:.3g}" if len(threshold) else ""
    ax.set_title(
        f"{task}: effective length (longest length with accuracy >={level}) vs step\n"
        f"band: from the accuracy intervals' ends; {draw.n_caption(part.n, part.units)}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    return _save(fig, stem, part)


def _tested_lengths(run_folder: str) -> list[int]:
    summary = Path(run_folder) / "summary.csv"
    if not summary.is_file():
        return []
    lengths = pd.read_csv(summary).context_length.astype(str)
    return [int(n) for n in lengths if n.isdigit()]


def _save(fig, stem: Path, table: pd.DataFrame) -> list[Path]:
    from evalkit.store.results import atomic_write

    written = []
    for suffix in ("png", "svg"):
        path = stem.with_suffix(f".{suffix}")
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=130, format=suffix))
        written.append(path)
    draw.pyplot().close(fig)
    csv = stem.with_suffix(".csv")
    columns = [c for c in [*COLUMNS, "metric", "threshold"] if c in table.columns]
    ordered = table.assign(_length=table.context_length.astype(str)).sort_values(
        ["series", "attention", "_length", "step"], kind="stable"
    )
    atomic_write(csv, lambda tmp: ordered[columns].to_csv(tmp, index=False))
    return written + [csv]


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def tagged_runs(folder: str | Path) -> list[Path]:
    """Run folders at or below ``folder`` whose manifest records a step, sorted by series and step."""
    from evalkit.store.results import read_manifest

    folder = Path(folder)
    if not folder.is_dir():
        raise ResultsError(
            f"{folder} does not exist", "pass a folder written by evalkit track or the training callback"
        )
    candidates = run_folders(folder)
    found = []
    for run in candidates:
        manifest = read_manifest(run)
        if "step" in manifest:
            found.append((str(manifest.get("series", "")), int(manifest["step"]), run))
    if not found:
        raise ResultsError(
            f"{folder} holds no run with a training step",
            "pass a folder written by evalkit track or the training callback (their manifests record the step)",
        )
    return [run for _, _, run in sorted(found, key=lambda t: (t[0], t[1], str(t[2])))]
