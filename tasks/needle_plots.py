"""Figures of the needle task: the classic depth x length heatmap and curves over length."""

from __future__ import annotations

import numpy as np

from evalkit import plots
from evalkit.grid import format_length


def _mark_training_length(ax, lengths, train, as_columns: bool) -> None:
    """A dashed line where the context lengths pass the model's training length."""
    if not train or not lengths or train >= max(lengths):
        return
    if as_columns:  # heatmap: between the last column inside and the first outside
        x = sum(1 for n in lengths if n <= train) - 0.5
    else:
        x = train
    ax.axvline(x, color="black", linestyle="--", linewidth=1.2)
    ax.annotate(f"training length {format_length(train)}", (x, 1.0), xycoords=("data", "axes fraction"),
                xytext=(3, -12), textcoords="offset points", fontsize=8)


def heatmaps(acc, title, train, path):
    plt = plots._pyplot()
    variants = list(dict.fromkeys(acc.attention))
    lengths = sorted(acc.context_length.unique())
    depths = sorted(acc.depth.unique())
    fig, axes = plt.subplots(1, len(variants), figsize=(1.2 + 1.1 * len(lengths) * len(variants) + 1.2, 0.45 * len(depths) + 2.2),
                             squeeze=False, layout="constrained")
    image = None
    for ax, variant in zip(axes[0], variants):
        grid = acc[acc.attention == variant].pivot_table(index="depth", columns="context_length", values="value", aggfunc="mean")
        grid = grid.reindex(index=depths, columns=lengths)
        image = ax.imshow(grid.to_numpy(), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        for (i, j), value in np.ndenumerate(grid.to_numpy()):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}".rstrip("0").rstrip("."), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(lengths)), [format_length(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
        ax.set_xlabel("context length (tokens)")
        ax.set_title(variant)
        _mark_training_length(ax, lengths, train, as_columns=True)
    axes[0][0].set_ylabel("needle depth")
    fig.colorbar(image, ax=axes[0].tolist(), label="accuracy", fraction=0.04)
    fig.suptitle(f"Needle retrieval — {title}")
    return _save_untight(fig, path)


def _save_untight(fig, path):
    from evalkit.results import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=130, format="png", bbox_inches="tight"))
    plots._pyplot().close(fig)
    return path


def metric_vs_length(frame, ylabel, title, train, path, ylim=None):
    fig, ax = plots.figure()
    curve = frame.groupby(["attention", "context_length"], sort=False, as_index=False)["value"].mean()
    for k, (variant, part) in enumerate(curve.groupby("attention", sort=False)):
        part = part.sort_values("context_length")
        ax.plot(part.context_length, part.value, plots.VARIANT_STYLES[k % 4], marker="o", label=variant)
    lengths = sorted(curve.context_length.unique())
    plots.length_axis(ax, lengths, ylim)
    _mark_training_length(ax, lengths, train, as_columns=False)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(title="attention", fontsize=8)
    return plots.save(fig, path)


def accuracy_vs_length(acc, title, train, path):
    return metric_vs_length(acc, "retrieval accuracy", f"Needle accuracy vs length — {title}", train, path, ylim=(-0.03, 1.03))
