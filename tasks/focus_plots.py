"""Figures of the focus task. Curves come from the task's summary (summary.csv's numbers and bands)."""

from __future__ import annotations

import numpy as np

from evalkit.core.grid import format_length
from evalkit.report import draw
from tasks.needle_plots import save_untight, summary_vs_length


def mass_vs_length(frame, summary, top_heads, in_heads, title, train, path):
    """Mean needle mass over all heads with its 95% band, and over each variant's top heads
    (dotted, crosses, no band: those heads are chosen on the same data)."""
    ax, fig = summary_vs_length(
        summary,
        "needle_mass",
        "attention mass on the needle",
        f"Needle attention mass vs length — {title}",
        train,
        ylim=(-0.02, 1.02),
    )
    mass = frame[frame.metric == "needle_mass"]
    for attention, part in mass.groupby("attention", sort=False):
        top = part[in_heads(part, top_heads[attention])].groupby("context_length")["value"].mean()
        ax.plot(
            top.index,
            top.values,
            ":",
            color=draw.variant_colour(attention),
            marker="x",
            markersize=5,
            linewidth=1.5,
            label=f"{attention}: top {len(top_heads[attention])} heads",
        )
    handles, names = ax.get_legend_handles_labels()
    ax.legend(
        handles, [n if "top" in n else f"{n}: all heads" for n in names], title="attention (95% band)", fontsize=8
    )
    return draw.save(fig, path)


def entropy_vs_length(summary, title, train, path):
    _, fig = summary_vs_length(
        summary, "entropy_norm", "normalized entropy (entropy / log n)", f"Attention entropy vs length — {title}", train
    )
    return draw.save(fig, path)


def layer_head_heatmap(frame, title, path):
    """Needle mass per layer and head at the longest length, one panel per variant; every cell
    averages the same samples, so n goes in the title."""
    plt = draw.pyplot()
    mass = frame[frame.metric == "needle_mass"]
    length = int(mass.context_length.max())
    mass = mass[mass.context_length == length]
    variants = list(dict.fromkeys(mass.attention))
    fig, axes = plt.subplots(
        1,
        len(variants),
        figsize=(2.0 + 3.2 * len(variants), 0.22 * mass.layer.nunique() + 2.2),
        squeeze=False,
        layout="constrained",
    )
    vmax = max(1e-6, float(mass.groupby(["attention", "layer", "head"])["value"].mean().max()))
    n = int(mass.groupby(["attention", "layer", "head"]).size().min())
    image = None
    for ax, variant in zip(axes[0], variants):
        grid = mass[mass.attention == variant].pivot_table(
            index="layer", columns="head", values="value", aggfunc="mean"
        )
        cmap = plt.get_cmap(draw.HEATMAP)
        image = ax.imshow(grid.to_numpy(), cmap=cmap, vmin=0, vmax=vmax, aspect="auto")
        if grid.size <= 160:  # few cells: their values are readable (all 30 x 9 of a real model are not)
            for (i, j), value in np.ndenumerate(grid.to_numpy()):
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color=draw.text_colour(cmap(value / vmax)),
                )
        ax.set_xticks(range(grid.shape[1]), [str(h) for h in grid.columns])
        step = max(1, grid.shape[0] // 15)
        ax.set_yticks(range(0, grid.shape[0], step), [str(l) for l in grid.index[::step]])
        ax.set_xlabel("head")
        ax.set_title(variant)
    axes[0][0].set_ylabel("layer")
    fig.colorbar(image, ax=axes[0].tolist(), label="attention mass on the needle", fraction=0.05)
    fig.suptitle(
        f"Needle attention mass per layer and head at {format_length(length)}, n = {n} samples per cell — {title}"
    )
    return save_untight(fig, path)


def analytic(frame, options, path):
    """Model-free: exact for one-hot logits, so no band."""
    fig, ax = draw.figure()
    for k, (attention, part) in enumerate(frame.groupby("attention", sort=False)):
        part = part.sort_values("context_length")
        s = part["s"].iloc[0]
        label = attention if s is None or np.isnan(s) else f"{attention} (s = {s:g})"
        ax.plot(
            part.context_length,
            part.value,
            draw.VARIANT_STYLES[k % 4],
            marker="o",
            markersize=3,
            label=label,
            color=draw.variant_colour(attention),
        )
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("number of keys n")
    ax.set_ylabel("maximum attention weight")
    what = (
        f"one logit {options.gap:g} above n-1 zeros"
        if options.logits == "onehot"
        else f"n normal logits, std {options.gap:g}"
    )
    ax.set_title(f"Top attention weight as n grows ({what})", fontsize=10)
    ax.legend(fontsize=8)
    return draw.save(fig, path)
