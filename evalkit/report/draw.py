"""Matplotlib figures, drawn from DataFrames only (never from model state)."""

from __future__ import annotations

from pathlib import Path

VARIANT_STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P"]

# Okabe & Ito's colour-blind-safe palette. A variant has one colour in every figure evalkit draws
# (per-run plots and ``evalkit plot``); other labels take a colour from their name, so they too keep it.
VARIANT_COLOURS = {
    "softmax": "#0072B2",
    "ssmax": "#D55E00",
    "ssmax-bias": "#E69F00",
    "logn": "#009E73",
    "native": "#CC79A7",
    "llama4-temp": "#56B4E9",
    "mistral-beta": "#000000",
}
OTHER_COLOURS = ["#56B4E9", "#CC79A7", "#000000", "#999999", "#E69F00", "#009E73"]
HEATMAP = "cividis"  # sequential, colour-blind-safe, and readable in greyscale
BAND_ALPHA = 0.18


def variant_colour(name: str) -> str:
    import zlib

    name = str(name)
    return VARIANT_COLOURS.get(name) or OTHER_COLOURS[zlib.crc32(name.encode()) % len(OTHER_COLOURS)]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: CI and servers have no display
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    from evalkit.store.results import atomic_write

    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=130, format=path.suffix.lstrip(".")))
    pyplot().close(fig)
    return path


def length_label(n: int) -> str:
    from evalkit.core.grid import format_length

    return format_length(int(n))


def length_axis(ax, lengths, ylim=None) -> None:
    """A log2 context-length x axis labelled 512, 1k, 2k, ... at the measured lengths."""
    from evalkit.core.grid import format_length

    lengths = sorted(int(n) for n in lengths)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [format_length(n) for n in lengths])
    ax.minorticks_off()
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel("context length (tokens)")


def figure(width=7.0, height=4.2):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(width, height))
    ax.grid(True, alpha=0.3)
    return fig, ax


def line_with_band(ax, x, value, low, high, colour, style="-", marker="o", label=None):
    """A line with its 95% band (fill_between); points without an interval draw no band."""
    import numpy as np

    x, value, low, high = (np.asarray(a, dtype=float) for a in (x, value, low, high))
    order = np.argsort(x)
    x, value, low, high = x[order], value[order], low[order], high[order]
    ax.plot(x, value, style, color=colour, marker=marker, markersize=4, label=label)
    if np.isfinite(low).any():
        ax.fill_between(x, low, high, color=colour, alpha=BAND_ALPHA, linewidth=0)
        if len(x) == 1:  # a band needs two points: one point shows its interval as an error bar
            ax.errorbar(
                x,
                value,
                yerr=[np.maximum(value - low, 0), np.maximum(high - value, 0)],
                color=colour,
                capsize=4,
                linestyle="none",
            )


def n_caption(n, units) -> str:
    """'n = 200 (40 units) per point', or its range when points differ: how much data is behind each point."""
    import pandas as pd

    def span(values):
        values = pd.to_numeric(pd.Series(values), errors="coerce").dropna().astype(int)
        if values.empty:
            return None
        return str(values.iloc[0]) if values.nunique() == 1 else f"{values.min()}-{values.max()}"

    n_text, units_text = span(n), span(units)
    if n_text is None:
        return ""
    return f"n = {n_text}" + (f" ({units_text} units)" if units_text and units_text != n_text else "") + " per point"


def summary_lines(ax, summary, column: str, x: str = "context_length") -> None:
    """One line per attention variant from a task summary: ``column`` with its 95% band
    (``column_ci_low``, ``column_ci_high``); the pooled "all" rows are left out."""
    import pandas as pd

    rows = summary[pd.to_numeric(summary[x], errors="coerce").notna()]
    for k, (variant, part) in enumerate(rows.groupby("attention", sort=False)):
        low, high = (
            part.get(f"{column}_ci_{end}", pd.Series(float("nan"), index=part.index)) for end in ("low", "high")
        )
        line_with_band(
            ax,
            part[x].astype(float),
            part[column],
            low,
            high,
            variant_colour(variant),
            VARIANT_STYLES[k % len(VARIANT_STYLES)],
            MARKERS[k % len(MARKERS)],
            label=str(variant),
        )


def mark_training_length(
    ax, lengths, train, as_columns: bool = False, label: str = "training length", row: int = 0, suffix: str = ""
) -> None:
    """A dashed line where the context lengths pass the model's training length."""
    from evalkit.core.grid import format_length

    lengths = list(lengths)
    if not train or not lengths:
        return
    if train >= max(lengths):  # said, so a reader knows every length is inside it
        ax.annotate(
            f"{label} {format_length(train)}{suffix}: beyond the axis",
            (1.0, 1.0),
            xycoords="axes fraction",
            xytext=(-4, -12 - 11 * row),
            textcoords="offset points",
            ha="right",
            fontsize=8,
            color="dimgray",
        )
        return

    # a heatmap's columns are categories: the line goes between the last column inside and the first outside
    x = sum(1 for n in lengths if n <= train) - 0.5 if as_columns else train
    ax.axvline(x, color="black", linestyle="--", linewidth=1.2)
    ax.annotate(
        f"{label} {format_length(train)}{suffix}",
        (x, 1.0),
        xycoords=("data", "axes fraction"),
        xytext=(3, -12 - 11 * row),
        textcoords="offset points",
        fontsize=8,
        bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
    )  # readable on dark cells


def text_colour(rgba) -> str:
    """Black or white cell text, whichever contrasts more with the cell colour (WCAG luminance)."""

    def linear(c):
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgba[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "white"
