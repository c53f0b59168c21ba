"""Figures of the perplexity task: loss vs position in the window, perplexity vs context length."""

from __future__ import annotations

import numpy as np

from evalkit.core.grid import format_length
from evalkit.report import draw, stats


def loss_vs_position(bins, units, title, train, path):
    """Mean NLL per position bin with its 95% band over windows; one panel per attention variant, a
    colour per context length (the panel title carries the variant's colour).

    Lengths whose curves are the same numbers (nested windows: each shorter window is the start of the
    longer one) are drawn once and named together. The y range is the one of position 16 onwards, where
    long-context differences live; the first positions' larger losses are marked at the top edge with
    their values."""
    from matplotlib.ticker import FuncFormatter

    curve = stats.estimates(bins, ["attention", "context_length", "position_bin", "position_end"], units, kind="mean")
    curve["ci_low"] = curve.ci_low.clip(lower=0.0)  # an NLL is >= 0; a t interval over few windows is not
    # geometric midpoint: on a log axis a bin [lo, hi) sits visually at sqrt(lo * (hi - 1))
    curve["position"] = np.sqrt(curve.position_bin * np.maximum(curve.position_bin, curve.position_end - 1))
    variants = list(dict.fromkeys(curve.attention))
    lengths = sorted(curve.context_length.unique())
    groups = {v: _nested(curve[curve.attention == v], lengths) for v in variants}
    drawn = sorted({longest for found in groups.values() for longest, _ in found})
    colours = {n: draw.SEQUENCE[k % len(draw.SEQUENCE)] for k, n in enumerate(drawn)}  # a length: one colour
    fig, axes = draw.subplots(1, len(variants), height=3.2 if len(variants) == 1 else 3.0, sharey=True)
    bottom, top = _y_range(curve)
    for ax, variant in zip(axes[0], variants):
        mine = curve[curve.attention == variant]
        for longest, same in groups[variant]:
            part = mine[mine.context_length == longest]
            line = draw.line_with_band(
                ax, part.position, part.value, part.ci_low, part.ci_high, colours[longest], label=_label(longest, same)
            )
            _mark_above(ax, line, top)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_length(int(round(x)))))
        ax.set_xlabel("token position in the window (log scale)")
        draw.mark_training_length(ax, [curve.position_end.max() - 1], train)
        ax.set_title(variant, color=draw.variant_colour(variant))
        ax.set_ylim(bottom, top)
    axes[0][0].set_ylabel("mean NLL (nats / token)")
    if (curve.value > top).any():  # the first positions: the range that matters is drawn, they are marked
        for ax in axes[0]:
            draw.add_note(ax, f"\u25b2: above the top edge (the first positions; up to {curve.value.max():.3g})")
    draw.shared_xlabel(fig, axes[0])
    draw.legend(fig, title=f"context length L ({draw.BAND_NOTE})")
    draw.title(fig, "Loss vs position in the window", title, draw.n_caption(curve.n, curve.units))
    return draw.save(fig, path)


def _nested(curve, lengths):
    """[(longest, [shorter lengths with the same numbers]), ...]: a shorter length whose every bin equals the
    longer one's (its windows are the longer windows' starts) is folded into it."""
    groups: list[tuple[int, list[int]]] = []
    for length in sorted(lengths, reverse=True):
        part = curve[curve.context_length == length].set_index("position_bin")
        if part.empty:
            continue
        for longest, same in groups:
            other = curve[curve.context_length == longest].set_index("position_bin").reindex(part.index)
            columns = ["value", "ci_low", "ci_high", "n"]
            if np.allclose(part[columns].to_numpy(float), other[columns].to_numpy(float), rtol=1e-9, equal_nan=True):
                same.append(length)
                break
        else:
            groups.append((length, []))
    return sorted(groups)


def _label(longest, same) -> str:
    if not same:
        return f"L = {format_length(longest)}"
    shorter = ", ".join(format_length(n) for n in sorted(same))
    return f"L = {format_length(longest)}; {shorter}: its first tokens, same values"


def _y_range(curve):
    """From position 16 on (all positions when the windows are shorter), with a little room."""
    later = curve[curve.position_bin >= 16]
    later = later if len(later) >= 2 else curve
    low, high = later.ci_low.fillna(later.value), later.ci_high.fillna(later.value)
    bottom, top = float(min(low.min(), later.value.min())), float(max(high.max(), later.value.max()))
    pad = 0.08 * (top - bottom) if top > bottom else 0.1
    return max(0.0, bottom - pad), top + pad


def _mark_above(ax, line, top):
    """Points above the axis drawn as carets on the top edge (the note under the axis gives their values)."""
    xs, ys = (np.asarray(a, dtype=float) for a in line.get_data())
    above = np.isfinite(ys) & (ys > top)
    if above.any():
        ax.plot(
            xs[above],
            [top] * int(above.sum()),
            linestyle="none",
            marker=6,
            color=line.get_color(),
            markersize=5,
            clip_on=False,
            label="_above",
        )


def perplexity_vs_length(summary, mode: str, title, train, path):
    """Perplexity (exp of mean NLL) with its 95% band, as in summary.csv."""
    fig, ax = draw.figure()
    lines = draw.summary_lines(ax, summary, "perplexity")
    lengths = sorted(summary.context_length.astype(int).unique())
    draw.length_axis(ax, lengths)
    draw.mark_training_length(ax, lengths, train)
    low, high = (summary.get(f"perplexity_ci_{end}", summary.perplexity) for end in ("low", "high"))
    draw.value_axis(ax, low, high, values=summary.perplexity)
    ax.set_ylabel("perplexity" + (f" ({mode})" if mode else "") + ", exp(mean NLL)")
    draw.legend(fig, title=f"attention ({draw.BAND_NOTE})" if any(l.band for l in lines.values()) else "attention")
    draw.title(fig, "Perplexity vs context length", title, draw.n_caption(summary.n, summary.units))
    return draw.save(fig, path)


def longppl_vs_length(summary, short, title, train, path):
    """LongPPL (solid) and perplexity (dashed) per variant with 95% bands; a length whose windows hold no
    key token (every length up to the short context) has no LongPPL point."""
    fig, ax = draw.figure(height=3.4)
    groups = list(summary.groupby("attention", sort=False))
    lengths = sorted(summary.context_length.astype(int).unique())
    for k, (variant, part) in enumerate(groups):
        colour, x = draw.variant_colour(variant), part.context_length.astype(float)
        shift = draw.dodge(k, len(groups), lengths)
        for column, style, marker, what in (
            ("longppl", "-", "o", "LongPPL (key tokens)"),
            ("perplexity", "--", "s", "perplexity (all tokens)"),
        ):
            draw.line_with_band(
                ax,
                x,
                part[column],
                part[f"{column}_ci_low"],
                part[f"{column}_ci_high"],
                colour,
                style,
                marker,
                label=f"{variant}: {what}",
                dodge=shift,
            )
    draw.length_axis(ax, lengths)
    draw.mark_training_length(ax, lengths, train)
    draw.log_y(ax)  # the two differ by a factor, and a factor reads the same anywhere on a log axis
    ax.set_ylabel("exp(mean NLL), log scale")
    keys = ", ".join(
        f"{format_length(int(n))}: {int(t)}"
        for n, t in summary.drop_duplicates("context_length")[["context_length", "key_tokens"]].itertuples(index=False)
    )
    draw.legend(fig, title=draw.BAND_NOTE + " over windows")
    draw.title(
        fig,
        "LongPPL and perplexity vs context length",
        title,
        f"short context {format_length(short[0])} (stride {format_length(short[1])}); key tokens (shared by the "
        f"variants) {keys}; {draw.n_caption(summary.n, summary.units)}",
    )
    return draw.save(fig, path)
