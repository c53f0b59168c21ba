"""Figures of the RULER suite, drawn from its summary (the numbers in summary.csv, with their 95% bands)."""

from __future__ import annotations

import math

import pandas as pd

from evalkit.report import draw

AVERAGE = "average"


def _per_length(summary):
    return summary[pd.to_numeric(summary.context_length, errors="coerce").notna()]


def score_per_task(summary, title, train, path):
    """One panel per task: its RULER score over length, a line and 95% band per variant."""
    rows = _per_length(summary)
    tasks = [t for t in dict.fromkeys(rows.ruler_task) if t != AVERAGE]
    columns = min(4, len(tasks))
    height = 1.5 + 1.75 * math.ceil(len(tasks) / columns)
    fig, axes = draw.subplots(math.ceil(len(tasks) / columns), columns, height=height)
    for ax, task in zip(axes.flat, tasks):
        part = rows[rows.ruler_task == task]
        draw.summary_lines(ax, part, "score")
        lengths = sorted(part.context_length.astype(int).unique())
        draw.length_axis(ax, lengths, (-0.03, 1.03))
        draw.mark_training_length(ax, lengths, train)
        caption = draw.n_caption(part.n, part.get("units"))
        ax.set_title(f"{task}\n{caption}" if caption else task)
    for ax in axes[:, 0]:
        ax.set_ylabel("RULER score")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    draw.shared_xlabel(fig, list(axes.flat)[: len(tasks)])
    draw.legend(fig, title=f"attention ({draw.BAND_NOTE})")
    skipped = summary[summary.get("note", pd.Series(dtype=object)).notna()] if "note" in summary else summary.iloc[:0]
    skipped = skipped[skipped.ruler_task != AVERAGE]
    note = "; ".join(f"{r.ruler_task} {r.note}" for r in skipped.itertuples())
    draw.title(fig, "RULER score per task vs length", title, note)
    return draw.save(fig, path)


def average_vs_length(summary, title, train, path):
    """RULER's headline: the average over tasks per length, the threshold, and each variant's effective length."""
    from tasks.needle_plots import accuracy_vs_length

    average = summary[summary.ruler_task == AVERAGE].rename(columns=lambda c: c.replace("score", "accuracy"))
    tasks = int(average.tasks.max()) if "tasks" in average and average.tasks.notna().any() else 0
    label = next(iter(average.comparable.dropna()), "") if "comparable" in average else ""
    # the label names "N of 13 tasks" when tasks are missing: the heading says it already
    reasons = [r for r in label.partition(": ")[2].split(", ") if r and not r.endswith(" of 13 tasks")]
    label = label.partition(":")[0] + (f": {', '.join(reasons)}" if reasons else "")
    heading = f"RULER average over {tasks} of 13 tasks vs length" + (f" ({label})" if label else "")
    return accuracy_vs_length(average, title, train, path, heading=heading, ylabel="average RULER score")
