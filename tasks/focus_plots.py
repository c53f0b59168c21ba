"""Figures of the focus task. Curves come from the task's summary (summary.csv's numbers and bands)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from evalkit.core.grid import format_length
from evalkit.report import draw
from tasks.needle_plots import summary_vs_length


def mass_vs_length(frame, summary, top_heads, in_heads, title, train, path):
    """Mean needle mass over all heads with its 95% band, and over each variant's top heads (dotted,
    crosses, no interval: those heads are picked by their mass on these same samples, so their curve is
    optimistic and an interval from the same data would not hold)."""
    fig, ax, lines = summary_vs_length(
        summary,
        "needle_mass",
        "attention mass on the needle",
        "Needle attention mass vs length",
        title,
        train,
        bounds=(-0.02, 1.02),
    )
    mass = frame[frame.metric == "needle_mass"]
    ends = [summary.needle_mass_ci_low, summary.needle_mass_ci_high]
    points = [summary.needle_mass]
    lengths = sorted(int(n) for n in mass.context_length.unique())
    for k, (attention, part) in enumerate(mass.groupby("attention", sort=False)):
        heads = top_heads[attention]
        top = part[in_heads(part, heads)].groupby("context_length")["value"].mean()
        points.append(top)
        names = ", ".join(f"L{int(l)}H{int(h)}" for l, h in zip(heads["layer"], heads["head"]))
        ax.plot(
            top.index.to_numpy(float) * draw.dodge(k, mass.attention.nunique(), lengths),
            top.values,
            ":",
            color=draw.variant_colour(attention),
            marker="x",
            markersize=5,
            linewidth=1.2,
            label=f"{attention}: its top {len(heads)} heads by mass on these same samples ({names}); "
            f"optimistic, {draw.NO_INTERVAL}",
        )
        if attention in lines:
            lines[attention].set_label(f"{attention}: all heads")
    series = lambda parts: pd.concat([pd.Series(p, dtype=float) for p in parts])  # noqa: E731
    draw.value_axis(ax, series(ends), series(ends), (-0.02, 1.02), values=series(points))
    draw.legend(fig, title=f"attention ({draw.BAND_NOTE})")
    return draw.save(fig, path)


def entropy_vs_length(summary, title, train, path):
    fig, _, _ = summary_vs_length(
        summary,
        "entropy_norm",
        "normalized entropy (entropy / log n)",
        "Attention entropy vs length",
        title,
        train,
        bounds=(-0.02, 1.02),
    )
    draw.legend(fig, title=f"attention ({draw.BAND_NOTE})")
    return draw.save(fig, path)


def layer_head_heatmap(frame, title, path):
    """Needle mass per layer and head at the longest length, one panel per variant; every cell
    averages the same samples, so n goes in the title."""
    plt = draw.pyplot()
    mass = frame[frame.metric == "needle_mass"]
    length = int(mass.context_length.max())
    mass = mass[mass.context_length == length]
    variants = list(dict.fromkeys(mass.attention))
    width = draw.COLUMN_WIDTH if len(variants) == 1 else min(draw.TEXT_WIDTH, 1.2 + 2.6 * len(variants))
    fig, axes = draw.subplots(1, len(variants), width=width, height=min(8.0, 0.16 * mass.layer.nunique() + 1.9))
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
                    fontsize=6,
                    color=draw.text_colour(cmap(value / vmax)),
                )
        ax.set_xticks(range(grid.shape[1]), [str(h) for h in grid.columns])
        step = max(1, grid.shape[0] // 15)
        ax.set_yticks(range(0, grid.shape[0], step), [str(l) for l in grid.index[::step]])
        ax.set_xlabel("head")
        ax.grid(False)
        ax.set_title(variant, color=draw.variant_colour(variant))
    axes[0][0].set_ylabel("layer")
    draw.shared_xlabel(fig, axes[0])
    fig.colorbar(image, ax=axes[0].tolist(), label="mass on the needle", fraction=0.05, pad=0.03)
    draw.title(
        fig, f"Needle attention mass per layer and head at {format_length(length)}", title, f"n = {n} samples per cell"
    )
    return draw.save(fig, path)


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
    draw.title(fig, "Top attention weight as n grows", what, "exact (no model, no interval)")
    draw.legend(fig, title="attention")
    return draw.save(fig, path)
