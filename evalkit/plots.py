"""Matplotlib figures, drawn from DataFrames only (never from model state)."""

from __future__ import annotations

from pathlib import Path

VARIANT_STYLES = ["-", "--", ":", "-."]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: CI and servers have no display
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    from evalkit.results import atomic_write

    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=130, format=path.suffix.lstrip(".")))
    _pyplot().close(fig)
    return path


def length_label(n: int) -> str:
    from evalkit.grid import format_length

    return format_length(int(n))


def lines_by_group(ax, frame, x: str, y: str, group: str, style_by: str | None = None, label_fmt=str, marker="o"):
    """One line per value of ``group`` (colour) and ``style_by`` (line style)."""
    plt = _pyplot()
    groups = sorted(frame[group].unique())
    colours = plt.cm.viridis([i / max(1, len(groups) - 1) for i in range(len(groups))]) if len(groups) > 1 else ["C0"]
    styles = sorted(frame[style_by].unique()) if style_by else [None]
    for colour, value in zip(colours, groups):
        for k, style_value in enumerate(styles):
            part = frame[frame[group] == value]
            if style_by:
                part = part[part[style_by] == style_value]
            if part.empty:
                continue
            part = part.sort_values(x)
            label = label_fmt(value) + (f" ({style_value})" if style_by and len(styles) > 1 else "")
            ax.plot(part[x], part[y], VARIANT_STYLES[k % len(VARIANT_STYLES)], color=colour, marker=marker,
                    markersize=3, label=label)


def length_axis(ax, lengths, ylim=None) -> None:
    """A log2 context-length x axis labelled 512, 1k, 2k, ... at the measured lengths."""
    from evalkit.grid import format_length

    lengths = sorted(int(n) for n in lengths)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [format_length(n) for n in lengths])
    ax.minorticks_off()
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel("context length (tokens)")


def figure(width=7.0, height=4.2):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(width, height))
    ax.grid(True, alpha=0.3)
    return fig, ax
