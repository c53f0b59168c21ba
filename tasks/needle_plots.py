"""Figures of the needle task: the classic depth x length heatmap and curves over length.

Curves are drawn from the task's summary (the numbers in summary.csv, with their 95% bands),
never recomputed here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from evalkit.core.grid import format_length
from evalkit.report import draw
from evalkit.report.render import effective_length_text


def heatmaps(acc, title, train, path):
    """Accuracy per (depth, length) cell, one panel per variant; n per cell, or in the title when constant."""
    plt = draw.pyplot()
    acc = acc.assign(depth=acc.depth.astype(float).fillna(-1.0))  # samples-file prompts may give no depth
    variants = list(dict.fromkeys(acc.attention))
    lengths = sorted(acc.context_length.unique())
    depths = sorted(acc.depth.unique())
    cells = acc.groupby(["attention", "depth", "context_length"])["value"].agg(["mean", "count"])
    constant_n = cells["count"].nunique() == 1
    width = min(draw.TEXT_WIDTH, max(draw.COLUMN_WIDTH, 1.3 + 0.55 * len(lengths) * len(variants)))
    fig, axes = draw.subplots(1, len(variants), width=width, height=1.9 + 0.24 * len(depths))
    cmap = plt.get_cmap(draw.HEATMAP)
    image = None
    for ax, variant in zip(axes[0], variants):
        part = cells.loc[variant]
        grid = part["mean"].unstack("context_length").reindex(index=depths, columns=lengths).to_numpy()
        counts = part["count"].unstack("context_length").reindex(index=depths, columns=lengths).to_numpy()
        image = ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            if np.isnan(value):
                continue
            text = f"{value:.2f}" + ("" if constant_n else f"\nn={int(counts[i, j])}")
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8 if constant_n else 7,
                color=draw.text_colour(cmap(value)),
            )
        ax.set_xticks(range(len(lengths)), [format_length(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:g}%" if d >= 0 else "n/a" for d in depths])
        ax.grid(False)
        ax.set_xlabel("context length (tokens)")
        ax.set_title(variant, color=draw.variant_colour(variant))
        draw.mark_training_length(ax, lengths, train, as_columns=True)
    axes[0][0].set_ylabel("needle depth")
    draw.shared_xlabel(fig, axes[0])
    fig.colorbar(image, ax=axes[0].tolist(), label="accuracy", fraction=0.05, pad=0.03)
    each = f"n = {int(cells['count'].iloc[0])} per cell" if constant_n else ""
    draw.title(fig, "Needle retrieval accuracy by depth and length", title, each)
    return draw.save(fig, path)


def summary_vs_length(summary, column, ylabel, heading, title, train, bounds=None, fixed=False):
    """One summary column over length, a line and 95% band per variant, the training length marked.
    Returns (fig, ax, lines by variant); the caller adds its own marks, then ``draw.legend`` and saves."""
    fig, ax = draw.figure(height=3.4)
    lines = draw.summary_lines(ax, summary, column)
    per_length = summary[pd.to_numeric(summary.context_length, errors="coerce").notna()]
    lengths = sorted(int(n) for n in per_length.context_length.unique())
    draw.length_axis(ax, lengths)
    draw.mark_training_length(ax, lengths, train)
    low, high = (per_length.get(f"{column}_ci_{end}", per_length[column]) for end in ("low", "high"))
    draw.value_axis(
        ax, low.fillna(per_length[column]), high.fillna(per_length[column]), bounds, fixed, per_length[column]
    )
    ax.set_ylabel(ylabel)
    draw.title(fig, heading, title, draw.n_caption(per_length.get("n"), per_length.get("units")))
    return fig, ax, lines


def accuracy_vs_length(summary, title, train, path, heading="Needle accuracy vs length", ylabel="retrieval accuracy"):
    """Accuracy with its band, the effective-length threshold, and each variant's effective length: a
    ring on that variant's own point, and in words in its legend entry."""
    fig, ax, lines = summary_vs_length(
        summary, "accuracy", ylabel, heading, title, train, bounds=(-0.03, 1.03), fixed=True
    )
    pooled = summary[summary.context_length.astype(str) == "all"]
    if "threshold" in pooled and pooled.threshold.notna().any():
        shared = pooled.threshold.nunique() == 1  # one grey line, else each variant's own (rel:F)
        for k, row in enumerate(pooled.itertuples()):
            line = lines.get(row.attention)
            if line is None:
                continue
            if not shared or k == 0:
                ax.axhline(
                    row.threshold,
                    color="grey" if shared else line.get_color(),
                    linestyle=":",
                    linewidth=1.0,
                    label=f"threshold {row.threshold:.3g}" + ("" if shared else f" ({row.attention})"),
                    zorder=1.5,
                )
            if not pd.isna(row.effective_length):
                draw.mark_on_line(ax, line, row.effective_length, label=f"_effective {row.attention}")
            text = effective_length_text(
                row.effective_length, row.effective_length_ci_low, row.effective_length_ci_high, short=True
            )
            line.set_label(f"{row.attention}: effective length {text}")
        from matplotlib.lines import Line2D

        ringed = pooled.effective_length.notna().any()
        ax.add_line(
            Line2D(
                [],
                [],
                linestyle="none",
                marker="o" if ringed else "",
                markersize=8,
                markerfacecolor="none",
                markeredgecolor="dimgrey",
                label=("ring: " if ringed else "")
                + "effective length [95% interval], the longest length at or above the threshold",
            )
        )
    draw.legend(fig, title=f"attention ({draw.BAND_NOTE})")
    return draw.save(fig, path)


def logprob_vs_length(summary, title, train, path):
    fig, _, _ = summary_vs_length(
        summary, "answer_logprob", "answer log-prob (nats, higher is better)", "Answer log-prob vs length", title, train
    )
    draw.legend(fig, title=f"attention ({draw.BAND_NOTE})")
    return draw.save(fig, path)
