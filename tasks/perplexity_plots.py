"""Figures of the perplexity task: loss vs position in the window, perplexity vs context length."""

from __future__ import annotations

import numpy as np

from evalkit.core.grid import format_length
from evalkit.report import draw, stats


def loss_vs_position(bins, units, title, train, path):
    """Mean NLL per position bin with its 95% band over windows; one panel per attention variant,
    colour by context length (the panel title carries the variant's colour)."""
    from matplotlib.ticker import FuncFormatter

    plt = draw.pyplot()
    curve = stats.estimates(bins, ["attention", "context_length", "position_bin", "position_end"], units, kind="mean")
    curve["ci_low"] = curve.ci_low.clip(lower=0.0)  # an NLL is >= 0; a t interval over few windows is not
    # geometric midpoint: on a log axis a bin [lo, hi) sits visually at sqrt(lo * (hi - 1))
    curve["position"] = np.sqrt(curve.position_bin * np.maximum(curve.position_bin, curve.position_end - 1))
    variants = list(dict.fromkeys(curve.attention))
    lengths = sorted(curve.context_length.unique())
    colours = plt.cm.viridis(np.linspace(0, 0.75, len(lengths))) if len(lengths) > 1 else ["#333333"]
    fig, axes = plt.subplots(1, len(variants), figsize=(1.0 + 5.6 * len(variants), 4.2), squeeze=False, sharey=True)
    for ax, variant in zip(axes[0], variants):
        for colour, length in zip(colours, lengths):
            part = curve[(curve.attention == variant) & (curve.context_length == length)]
            if not part.empty:
                draw.line_with_band(
                    ax,
                    part.position,
                    part.value,
                    part.ci_low,
                    part.ci_high,
                    colour,
                    marker="o",
                    label=f"L = {format_length(length)}",
                )
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_length(int(round(x)))))
        ax.grid(True, alpha=0.3)
        draw.mark_training_length(ax, [curve.position.max()], train, label="training length")
        ax.set_xlabel("token position in the window (log scale)")
        ax.set_title(variant, color=draw.variant_colour(variant), fontsize=10)
    axes[0][0].set_ylabel("mean NLL (nats / token)")
    axes[0][-1].legend(title="context length (95% band)", fontsize=8, title_fontsize=8)
    caption = draw.n_caption(curve.n, curve.units)  # windows behind each bin's mean
    fig.suptitle(f"Loss vs position — {title}" + (f"; {caption}" if caption else ""), fontsize=11)
    return draw.save(fig, path)


def perplexity_vs_length(summary, mode: str, title, train, path):
    """Perplexity (exp of mean NLL) with its 95% band, as in summary.csv."""
    fig, ax = draw.figure()
    draw.summary_lines(ax, summary, "perplexity")
    lengths = sorted(summary.context_length.astype(int).unique())
    draw.length_axis(ax, lengths)
    draw.mark_training_length(ax, lengths, train)
    ax.set_ylabel("perplexity" + (f" ({mode})" if mode else "") + ", exp(mean NLL)")
    caption = draw.n_caption(summary.n, summary.units)
    ax.set_title(f"Perplexity vs context length — {title}" + (f"\n{caption}" if caption else ""), fontsize=10)
    ax.legend(title="attention (95% band)", fontsize=8)
    return draw.save(fig, path)


def longppl_vs_length(summary, short, title, train, path):
    """LongPPL (solid) and perplexity (dashed) per variant with 95% bands; a length whose windows hold no
    key token (every length up to the short context) has no LongPPL point."""
    fig, ax = draw.figure()
    for _k, (variant, part) in enumerate(summary.groupby("attention", sort=False)):
        colour = draw.variant_colour(variant)
        x = part.context_length.astype(float)
        draw.line_with_band(
            ax,
            x,
            part.longppl,
            part.longppl_ci_low,
            part.longppl_ci_high,
            colour,
            "-",
            "o",
            label=f"{variant}: LongPPL (key tokens)",
        )
        # a lone length with key tokens (the rest at or below the short context) has no band to draw: bars show it
        y, low, high = (part[c].to_numpy(dtype=float) for c in ("longppl", "longppl_ci_low", "longppl_ci_high"))
        ok = np.isfinite(y) & np.isfinite(low) & np.isfinite(high)
        ax.errorbar(
            x[ok], y[ok], yerr=[y[ok] - low[ok], high[ok] - y[ok]], fmt="none", ecolor=colour, capsize=4, lw=1.2
        )
        draw.line_with_band(
            ax,
            x,
            part.perplexity,
            part.perplexity_ci_low,
            part.perplexity_ci_high,
            colour,
            "--",
            "s",
            label=f"{variant}: perplexity (all tokens)",
        )
    lengths = sorted(summary.context_length.astype(int).unique())
    draw.length_axis(ax, lengths)
    draw.mark_training_length(ax, lengths, train)
    ax.set_yscale("log")
    ax.set_ylabel("exp(mean NLL), log scale")
    keys = ", ".join(
        f"{format_length(int(n))}: {int(t)}"
        for n, t in summary.drop_duplicates("context_length")[["context_length", "key_tokens"]].itertuples(index=False)
    )
    ax.set_title(
        f"LongPPL and perplexity vs context length — {title}\nshort context {format_length(short[0])} "
        f"(stride {format_length(short[1])}); key tokens (shared by the variants) {keys}; "
        f"{draw.n_caption(summary.n, summary.units)}",
        fontsize=9,
    )
    ax.legend(title="95% band over windows", fontsize=7, title_fontsize=8)
    return draw.save(fig, path)
