"""``evalkit plot``: length-generalization figures across any set of run folders.

Per task, the headline metric vs context length, one line per (model, attention variant):
colour by variant (the same colour for a variant in every figure), line style by model, the
training length of each model marked. PNG and SVG.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from evalkit import plots
from evalkit.errors import ResultsError
from evalkit.grid import format_length

# The number a reader looks for first, per task: (metric rows to average, axis label, y limits).
HEADLINE = {
    "perplexity": ("perplexity", "perplexity (lower is better)", None),
    "needle": ("greedy_correct", "needle retrieval accuracy", (-0.03, 1.03)),
    "focus": ("needle_mass", "attention mass on the needle (mean over heads)", (-0.02, 1.02)),
}
VARIANT_COLOURS = {"softmax": "C0", "ssmax": "C3", "ssmax-bias": "C1", "logn": "C2"}
MODEL_STYLES = ["-", "--", ":", "-."]


def _load(folder: Path) -> tuple[pd.DataFrame, dict]:
    parquet, manifest = folder / "results.parquet", folder / "manifest.json"
    if not parquet.is_file() or not manifest.is_file():
        raise ResultsError(f"{folder} is not a finished evalkit run (no results.parquet or manifest.json)",
                           "pass run folders written by evalkit run")
    return pd.read_parquet(parquet), json.loads(manifest.read_text())


def training_length(manifest: dict) -> int | None:
    """The checkpoint's own training length when it records one, else its position limit.

    A ``--train-length`` given for logn is an evaluation setting, not a fact about the model.
    """
    own = [a["train_length"] for a in manifest.get("attention", []) if a.get("from_checkpoint") and a.get("train_length")]
    model = manifest.get("model") or {}
    return own[0] if own else model.get("training_length") or model.get("max_position_embeddings")


def plot_runs(folders: list[str], out: str, metric: str | None = None) -> list[Path]:
    """Figures of each task's headline metric, or of ``metric`` for the tasks whose rows have it."""
    frames, trains = [], {}
    for folder in map(Path, folders):
        frame, manifest = _load(folder)
        if "contains" in set(frame.metric) and "greedy_correct" not in set(frame.metric):
            frame = frame.assign(metric=frame.metric.replace({"contains": "greedy_correct"}))
        frames.append(frame)
        trains[str(frame.model.iloc[0]) if len(frame) else folder.name] = training_length(manifest)
    data = pd.concat(frames, ignore_index=True)
    if metric is not None and metric not in set(data.metric):
        raise ResultsError(f"no run has the metric {metric!r}",
                           f"use one of: {', '.join(sorted(set(data.metric)))}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task, part in data.groupby("task", sort=False):
        if metric is None:
            name, label, ylim = HEADLINE.get(task, (part.metric.iloc[0], part.metric.iloc[0], None))
        else:
            name, label, ylim = metric, metric.replace("_", " "), None
        curve = part[part.metric == name].groupby(["model", "attention", "context_length"], as_index=False, sort=False)["value"].mean()
        if curve.empty:
            continue
        fig, ax = plots.figure(7.5, 4.5)
        models = list(dict.fromkeys(curve.model))
        for (model, attention), line in curve.groupby(["model", "attention"], sort=False):
            line = line.sort_values("context_length")
            style = MODEL_STYLES[models.index(model) % len(MODEL_STYLES)]
            ax.plot(line.context_length, line.value, style, marker="o", color=VARIANT_COLOURS.get(attention, "C7"),
                    label=f"{model} · {attention}" if len(models) > 1 else attention)
        for k, model in enumerate(models):
            train = trains.get(model)
            if train and train < curve.context_length.max():
                ax.axvline(train, color="gray", linestyle=MODEL_STYLES[k % len(MODEL_STYLES)], linewidth=1)
                ax.annotate(f"train {format_length(train)}" + (f" ({model})" if len(models) > 1 else ""), (train, 0.98),
                            xycoords=("data", "axes fraction"), xytext=(3, -10 - 10 * k), textcoords="offset points", fontsize=7)
        plots.length_axis(ax, curve.context_length.unique(), ylim)
        ax.set_ylabel(label)
        ax.set_title(f"{task}: length generalization")
        ax.legend(fontsize=8)
        fig.tight_layout()
        for suffix in ("png", "svg"):
            path = out_dir / f"{task}_{name}_vs_length.{suffix}"
            fig.savefig(path, dpi=130)
            written.append(path)
        plots._pyplot().close(fig)
    return written
