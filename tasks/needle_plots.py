"""Figures of the needle task: the classic depth x length heatmap and curves over length.

Curves are drawn from the task's summary (the numbers in summary.csv, with their 95% bands),
never recomputed here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from evalkit.core.grid import format_length
from evalkit.report import draw


def heatmaps(acc, title, train, path):
    """Accuracy per (depth, length) cell, one panel per variant; n per cell, or in the title when constant."""
    plt = draw.pyplot()
    acc = acc.assign(depth=acc.depth.astype(float).fillna(-1.0))  # samples-file prompts may give no depth
    variants = list(dict.fromkeys(acc.attention))
    lengths = sorted(acc.context_length.unique())
    depths = sorted(acc.depth.unique())
    cells = acc.groupby(["attention", "depth", "context_length"])["value"].agg(["mean", "count"])
    constant_n = cells["count"].nunique() == 1
    fig, axes = plt.subplots(
        1,
        len(variants),
        figsize=(1.2 + 1.1 * len(lengths) * len(variants) + 1.2, 0.5 * len(depths) + 2.2),
        squeeze=False,
        layout="constrained",
    )
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
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=draw.text_colour(cmap(value)))
        ax.set_xticks(range(len(lengths)), [format_length(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:g}%" if d >= 0 else "n/a" for d in depths])
        ax.set_xlabel("context length (tokens)")
        ax.set_title(variant)
        draw.mark_training_length(ax, lengths, train, as_columns=True)
    axes[0][0].set_ylabel("needle depth")
    fig.colorbar(image, ax=axes[0].tolist(), label="accuracy", fraction=0.04)
    each = f" (n = {int(cells['count'].iloc[0])} per cell)" if constant_n else ""
    fig.suptitle(f"Needle retrieval{each} — {title}")
    return save_untight(fig, path)


def save_untight(fig, path):
    from evalkit.store.results import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=130, format="png", bbox_inches="tight"))
    draw.pyplot().close(fig)
    return path


def summary_vs_length(summary, column, ylabel, title, train, ylim=None):
    """One summary column over length, a line and 95% band per variant, the training length marked."""
    fig, ax = draw.figure()
    draw.summary_lines(ax, summary, column)
    lengths = sorted(int(n) for n in pd.to_numeric(summary.context_length, errors="coerce").dropna().unique())
    draw.length_axis(ax, lengths, ylim)
    draw.mark_training_length(ax, lengths, train)
    ax.set_ylabel(ylabel)
    per_length = summary[pd.to_numeric(summary.context_length, errors="coerce").notna()]
    caption = draw.n_caption(per_length.get("n"), per_length.get("units"))
    ax.set_title(title + (f"\n{caption}" if caption else ""), fontsize=10)
    ax.legend(title="attention (95% band)", fontsize=8)
    return ax, fig


def accuracy_vs_length(summary, title, train, path, heading="Needle accuracy vs length", ylabel="retrieval accuracy"):
    """Accuracy with its band, the effective-length threshold, and each variant's effective length."""
    ax, fig = summary_vs_length(summary, "accuracy", ylabel, f"{heading} — {title}", train, ylim=(-0.03, 1.03))
    pooled = summary[summary.context_length.astype(str) == "all"]
    if "threshold" in pooled and pooled.threshold.notna().any():
        shared = pooled.threshold.nunique() == 1  # one grey line, else each variant's own (rel:F)
        for k, row in enumerate(pooled.itertuples()):
            colour = draw.variant_colour(row.attention)
            if not shared or k == 0:
                ax.axhline(row.threshold, color="grey" if shared else colour, linestyle=":", linewidth=1.2)
            if not pd.isna(row.effective_length):  # on the axis, stacked, so equal lengths stay visible
                ax.annotate(
                    "▲",
                    (row.effective_length, 0),
                    xycoords=("data", "axes fraction"),
                    xytext=(0, 1 + 10 * k),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    color=colour,
                    fontsize=11,
                )
        labels = {row.attention: f"{row.attention}: effective {effective_text(row)}" for row in pooled.itertuples()}
        handles, names = ax.get_legend_handles_labels()
        ax.legend(
            handles,
            [labels.get(n, n) for n in names],
            title="attention (95% band); ▲ effective length, dotted: threshold",
            fontsize=8,
            title_fontsize=8,
            loc="best",
        )
    return draw.save(fig, path)


def effective_text(row) -> str:
    """'2k [1k, 4k]', or '< shortest' where even the shortest length falls below the threshold."""

    def text(n):
        return "< shortest" if pd.isna(n) else format_length(int(n))

    return f"{text(row.effective_length)} [{text(row.effective_length_ci_low)}, {text(row.effective_length_ci_high)}]"


def logprob_vs_length(summary, title, train, path):
    _, fig = summary_vs_length(
        summary,
        "answer_logprob",
        "answer log-prob (nats, higher is better)",
        f"Answer log-prob vs length — {title}",
        train,
    )
    return draw.save(fig, path)
