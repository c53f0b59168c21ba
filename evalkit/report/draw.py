"""One figure style for every figure evalkit draws (a run's own plots, ``evalkit plot``, studies), drawn
from DataFrames only (never from model state).

What the style holds to, so a figure can go into a paper as it is:
- sized for a paper: one column (``COLUMN_WIDTH``) for a single panel, the text width for panels side by
  side; fonts at 7-8 pt at that size; vector output (PDF with embedded TrueType fonts, SVG with text kept
  as text) besides PNG, chosen with ``output``;
- Okabe & Ito's colour-blind-safe palette; a variant has one colour in every figure, and lines differ in
  dash and marker too, so they stay apart in greyscale;
- a 95% band is a light fill (hatched for a dashed line) with its edges drawn in the line's own colour
  and dash, so overlapping bands stay readable instead of blending into a colour no legend entry has;
- a marker that belongs to a line (an effective length) sits on that line's own point;
- text that fits: titles and labels wrap to the canvas, legends go below the axes and break into as
  many rows as they need; notes (a training length beyond the axis) go under the axis label, never over
  the data;
- a value axis on a log scale where the data span decades, and a bounded one (attention mass) zoomed to
  its data rather than fixed at 0-1.
"""

from __future__ import annotations

import textwrap
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

COLUMN_WIDTH = 3.4  # inches: one column of a two-column paper (ICML 3.25, ACL 3.15, IEEE 3.5)
TEXT_WIDTH = 7.0  # inches: the full text width of the same papers
FORMATS = ("png", "pdf", "svg")

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
# ordered series (context lengths) in the same palette, in an order whose neighbours contrast
SEQUENCE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#999999"]
HEATMAP = "cividis"  # sequential, colour-blind-safe, and readable in greyscale
BAND_ALPHA = 0.12  # light: two bands over each other still show both edges and what lies beneath
# a dashed line's band is hatched, not filled, so where two bands overlap both stay readable (and in greyscale)
BAND_HATCH = {"--": "////", ":": "\\\\\\\\", "-.": "xxx"}
BAND_NOTE = "bands: 95% intervals"
NO_INTERVAL = "no interval"  # the words a line without a band says in its legend entry
DECADES_FOR_LOG = 1.3  # a positive axis whose data span more than this many decades goes to a log scale

STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.3,
    "lines.markersize": 4,
    "legend.frameon": False,
    "savefig.dpi": 300,
    "pdf.fonttype": 42,  # TrueType in PDFs: what publishers ask for, and the text stays selectable
    "ps.fonttype": 42,
    "svg.fonttype": "none",  # text stays text in SVG
}

_formats: ContextVar[tuple[str, ...]] = ContextVar("formats", default=("png",))
_written: ContextVar[list | None] = ContextVar("written", default=None)


def variant_colour(name: str) -> str:
    import zlib

    name = str(name)
    return VARIANT_COLOURS.get(name) or OTHER_COLOURS[zlib.crc32(name.encode()) % len(OTHER_COLOURS)]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: CI and servers have no display
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


# -- output --------------------------------------------------------------------------------------


def check_formats(formats) -> tuple[str, ...]:
    from evalkit.core.errors import ConfigError

    formats = tuple(dict.fromkeys(str(f).lower().lstrip(".") for f in formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"bad figure format {', '.join(bad) or '(none)'}", f"use one of: {', '.join(FORMATS)}")
    return formats


@contextmanager
def output(formats=("png",)):
    """Figures saved inside this block are written in each of ``formats`` (png, pdf, svg), beside one
    another; yields the list of every file written."""
    written: list[Path] = []
    tokens = _formats.set(check_formats(formats)), _written.set(written)
    try:
        yield written
    finally:
        _formats.reset(tokens[0])
        _written.reset(tokens[1])


def save(fig, path: Path) -> Path:
    """Fit the text to the canvas, then write the figure in the current formats (``output``); returns
    the path in the first format (the one ``path`` names when no other is asked for)."""
    from evalkit.store.results import atomic_write

    path = Path(path)
    fit_text(fig)
    paths = [path.with_suffix(f".{fmt}") for fmt in _formats.get()]
    for out in paths:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda tmp, fmt=out.suffix[1:]: _write(fig, tmp, fmt))
    if _written.get() is not None:
        _written.get().extend(paths)
    pyplot().close(fig)
    return paths[0]


def _write(fig, target, fmt: str) -> None:
    # the figure keeps its size: a column-wide figure stays column-wide (no bbox_inches="tight")
    fig.savefig(target, format=fmt, metadata={"Software": None} if fmt == "png" else None)


# -- figures and axes ----------------------------------------------------------------------------


def figure(width: float = COLUMN_WIDTH, height: float | None = None):
    """One panel, a column wide, with room below for the legend."""
    fig, axes = subplots(1, 1, width=width, height=height)
    return fig, axes[0][0]


def subplots(rows: int = 1, columns: int = 1, width: float | None = None, height: float | None = None, **kw):
    """Panels in the one style: a column wide for one panel, the text width for several; always a 2-d array."""
    plt = pyplot()
    if width is None:
        width = COLUMN_WIDTH if columns == 1 else min(TEXT_WIDTH, 1.0 + 2.3 * columns)
    if height is None:
        height = 1.4 + 1.9 * rows if columns > 1 or rows > 1 else 3.0
    fig, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False, layout="constrained", **kw)
    return fig, axes


def length_label(n: int) -> str:
    from evalkit.core.grid import format_length

    return format_length(int(n))


def length_axis(ax, lengths, ylim=None) -> None:
    """A log2 context-length x axis labelled 512, 1k, 2k, ... at the measured lengths."""
    lengths = sorted(int(n) for n in lengths)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [length_label(n) for n in lengths])
    ax.minorticks_off()
    if len(lengths) > 1:  # a little room either side, so the end markers and dodged points are not cut
        span = lengths[-1] / lengths[0]
        ax.set_xlim(lengths[0] / span**0.06, lengths[-1] * span**0.06)
    else:
        ax.set_xlim(lengths[0] / 1.5, lengths[0] * 1.5)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel("context length (tokens)")


def value_axis(ax, low, high, bounds: tuple[float, float] | None = None, fixed: bool = False, values=None) -> None:
    """The y range from the data (interval ends, and the points ``values``): a log scale where the points
    are positive and span decades (attention mass from 0.01 to 0.8); a bounded metric (0-1) zoomed to its
    data, or its whole range when ``fixed`` (an accuracy reads against 0 and 1)."""
    import numpy as np

    ends = np.concatenate([np.asarray(low, dtype=float).ravel(), np.asarray(high, dtype=float).ravel()])
    points = ends if values is None else np.asarray(values, dtype=float).ravel()
    ends, points = ends[np.isfinite(ends)], points[np.isfinite(points)]
    if fixed and bounds:
        ax.set_ylim(*bounds)
        return
    if not len(ends) and not len(points):
        return
    everything = np.concatenate([ends, points])
    lo, hi = float(everything.min()), float(everything.max())
    if len(points) and points.min() > 0 and np.log10(points.max() / points.min()) > DECADES_FOR_LOG:
        positive = everything[everything > 0]  # an interval's end at or below 0 runs off the bottom
        top = hi * 1.3 if not bounds else min(hi * 1.3, bounds[1])
        log_y(ax)
        ax.set_ylim(max(positive.min(), points.min() / 10) / 1.3, top)
        return
    pad = 0.06 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3)
    lo, hi = lo - pad, hi + pad
    if bounds:  # (low, high) with the margin that keeps markers at the ends whole
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    ax.set_ylim(lo, hi)


def log_y(ax) -> None:
    """A log value axis labelled 0.01, 0.1, 1, 10 (not 10^-2)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def dodge(k: int, count: int, lengths) -> float:
    """The factor that moves series k of ``count`` sideways on a log-length axis, by about 2% of the axis
    each, so points that coincide (two variants both at 0) stay visible."""
    import math

    lengths = [int(n) for n in lengths]
    if count < 2 or not lengths:
        return 1.0
    octaves = max(1.0, math.log2(max(lengths) / min(lengths)))
    return 2 ** (0.022 * octaves * (k - (count - 1) / 2))


# -- lines, bands and markers --------------------------------------------------------------------


def line_with_band(ax, x, value, low, high, colour, style="-", marker="o", label=None, dodge: float = 1.0):
    """A line with its 95% band: a light fill whose edges are drawn in the line's colour and dash; a lone
    point with an interval gets an error bar. Returns the line (its band, if any, as ``line.band``)."""
    import numpy as np

    x, value, low, high = (np.asarray(a, dtype=float) for a in (x, value, low, high))
    order = np.argsort(x)
    x, value, low, high = x[order] * dodge, value[order], low[order], high[order]
    (line,) = ax.plot(
        x, value, style, color=colour, marker=marker, markersize=4, markeredgewidth=0.8, label=label, zorder=3
    )
    line.band = None
    ok = np.isfinite(low) & np.isfinite(high)
    if ok.sum() >= 2:
        from matplotlib.colors import to_rgba

        hatch = BAND_HATCH.get(style)
        line.band = ax.fill_between(
            x,
            low,
            high,
            where=ok,
            facecolor=to_rgba(colour, BAND_ALPHA / 2 if hatch else BAND_ALPHA),
            edgecolor=to_rgba(colour, 0.35),
            hatch=hatch,
            linewidth=0,
            zorder=1,
        )
        for edge in (low, high):
            ax.plot(x[ok], edge[ok], style, color=colour, linewidth=0.6, alpha=0.8, zorder=2, label="_band edge")
    elif ok.any():  # a band needs two points: a lone interval shows as an error bar
        line.band = ax.errorbar(
            x[ok],
            value[ok],
            yerr=[np.maximum(value[ok] - low[ok], 0), np.maximum(high[ok] - value[ok], 0)],
            color=colour,
            capsize=3,
            linestyle="none",
            linewidth=0.9,
            zorder=2,
        )
    return line


def summary_lines(ax, summary, column: str, x: str = "context_length", dodged: bool = True) -> dict:
    """One line per attention variant from a task summary: ``column`` with its 95% band
    (``column_ci_low``, ``column_ci_high``); the pooled "all" rows are left out. Returns variant -> line."""
    import pandas as pd

    rows = summary[pd.to_numeric(summary[x], errors="coerce").notna()]
    groups = list(rows.groupby("attention", sort=False))
    lengths = pd.to_numeric(rows[x]).astype(float)
    lines = {}
    for k, (variant, part) in enumerate(groups):
        low, high = (
            part.get(f"{column}_ci_{end}", pd.Series(float("nan"), index=part.index)) for end in ("low", "high")
        )
        lines[variant] = line_with_band(
            ax,
            part[x].astype(float),
            part[column],
            low,
            high,
            variant_colour(variant),
            VARIANT_STYLES[k % len(VARIANT_STYLES)],
            MARKERS[k % len(MARKERS)],
            label=str(variant),
            dodge=dodge(k, len(groups), lengths) if dodged else 1.0,
        )
    return lines


def mark_on_line(ax, line, x: float, label: str | None = None, marker: str = "o", size: float = 10):
    """A ring on ``line``'s own point nearest ``x`` (in log distance: its dodged copy), in its colour."""
    import numpy as np

    xs, ys = (np.asarray(a, dtype=float) for a in line.get_data())
    i = int(np.nanargmin(np.abs(np.log(xs) - np.log(float(x)))))
    (ring,) = ax.plot(
        [xs[i]],
        [ys[i]],
        linestyle="none",
        marker=marker,
        markersize=size,
        markerfacecolor="none",
        markeredgecolor=line.get_color(),
        markeredgewidth=1.4,
        label=label or "_marker",
        zorder=4,
    )
    ring.on_line = line
    return ring


def mark_training_length(
    ax, lengths, train, as_columns: bool = False, label: str = "training length", row: int = 0, suffix: str = ""
) -> None:
    """Where the lengths pass the model's training length: a dashed line with a legend entry (a heatmap,
    which has no legend, says so under its axis label); a training length past every length is a note
    under the axis label, never text over the data. Set the x label first."""
    lengths = list(lengths)
    if not train or not lengths:
        return
    what = f"{label} {length_label(train)}{suffix}"
    if train >= max(lengths):
        add_note(ax, f"{what} (beyond this axis)")
        return
    # a heatmap's columns are categories: the line goes between the last column inside and the first outside
    x = sum(1 for n in lengths if n <= train) - 0.5 if as_columns else train
    dashes = ["--", "-.", ":"][row % 3]
    ax.axvline(x, color="black", linestyle=dashes, linewidth=1.0, label=what, zorder=2.5)
    if as_columns:
        add_note(ax, f"dashed line: {what}")


def shared_xlabel(fig, axes) -> None:
    """Panels side by side with one x label (and its notes): said once, under them all."""
    axes = [ax for ax in axes if ax.axison]
    labels = {ax.get_xlabel() for ax in axes}
    if len(axes) > 1 and len(labels) == 1 and labels != {""}:
        fig.supxlabel(labels.pop(), fontsize=STYLE["axes.labelsize"])
        for ax in axes:
            ax.set_xlabel("")


def add_note(ax, note: str) -> None:
    """A line of plain words under the x axis label."""
    label = ax.get_xlabel()
    ax.set_xlabel(f"{label}\n{note}" if label else note)


def legend(fig, axes=None, title: str | None = None, handles=None, labels=None):
    """The figure's legend below its panels, entries in as many columns as fit the width. Entries come from
    the labelled artists of ``axes`` (all panels by default), each label once."""
    if handles is None:
        handles, labels, seen = [], [], set()
        for ax in axes if axes is not None else fig.axes:
            for h, name in zip(*ax.get_legend_handles_labels()):
                if name not in seen:
                    seen.add(name)
                    handles.append(h)
                    labels.append(name)
    if not handles:
        return None
    # a line drawn with a band that has none (one unit per point) says so; a legend without any band claims none
    missing = [getattr(h, "band", False) is None for h in handles]
    labels = [
        f"{name} ({NO_INTERVAL})" if gap and NO_INTERVAL not in name else name for name, gap in zip(labels, missing)
    ]
    for h, name, gap in zip(handles, labels, missing):
        if gap:
            h.set_label(name)
    if title and not any(getattr(h, "band", None) is not None for h in handles):
        title = title.replace(f" ({BAND_NOTE})", "").replace(BAND_NOTE, "") or None
    if getattr(fig, "_supxlabel", None) is not None:  # the bottom holds the panels' shared label: go right
        labels = ["\n".join(textwrap.wrap(name, 24)) or name for name in labels]
        return fig.legend(handles, labels, loc="outside right upper", title="\n".join(textwrap.wrap(title or "", 24)))
    # at 7 pt a character is about 4 pt wide; an entry's key and gaps take about 30 pt
    room = int((fig.get_figwidth() * 72 - 30) / 4.0)
    labels = ["\n".join(textwrap.wrap(name, room)) or name for name in labels]
    widest = max(len(line) for name in labels for line in name.split("\n"))
    per_row = max(1, min(len(labels), int(fig.get_figwidth() * 72 / (4.0 * widest + 30))))
    return fig.legend(handles, labels, loc="outside lower center", ncols=per_row, title=title)


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


def title(fig_or_ax, heading: str, about: str = "", caption: str = "") -> None:
    """A title: what is drawn, then on a second line of what (model, variants) and from how much data.
    Lines too long for the canvas are wrapped when the figure is saved."""
    text = "\n".join(part for part in (heading, "; ".join(p for p in (about, caption) if p)) if part)
    if hasattr(fig_or_ax, "suptitle"):
        fig_or_ax.suptitle(text)
    else:
        fig_or_ax.set_title(text)


def text_colour(rgba) -> str:
    """Black or white cell text, whichever contrasts more with the cell colour (WCAG luminance)."""

    def linear(c):
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgba[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "white"


# -- text that fits ------------------------------------------------------------------------------


def fit_text(fig, rounds: int = 4) -> None:
    """Wrap titles and axis labels that would run past the canvas (or a panel title past its panel's
    share), and give a legend more rows when it is too wide; constrained layout then makes room."""
    fig.canvas.draw()
    for _ in range(rounds):
        changed = _tall_enough(fig)
        renderer = fig.canvas.get_renderer()
        canvas = fig.bbox
        for text, room in _wrappable(fig, canvas):
            box = text.get_window_extent(renderer)
            length = box.height if text.get_rotation() % 180 == 90 else box.width
            if length > room and _rewrap(text, room / length):
                changed = True
        for lg in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]:
            width = lg.get_window_extent(renderer).width
            if width > canvas.width and lg._ncols > 1:
                lg._ncols -= 1
                changed = True
            elif width > canvas.width:  # one column and still too wide: wrap its entries
                changed |= any([_rewrap(t, canvas.width / width) for t in [lg.get_title(), *lg.get_texts()]])
        if not changed:
            return
        fig.canvas.draw()


MIN_PANEL_HEIGHT = 1.5  # inches: a panel squeezed by its text below this grows the figure instead


def _tall_enough(fig) -> bool:
    """Make the figure taller when its text (title, notes, legend) leaves a panel too short to read; the
    width, a paper's column, stays. True if it grew."""
    panels = [a for a in fig.axes if a.get_visible() and a.axison and not hasattr(a, "_colorbar")]
    if not panels:
        return False
    short = MIN_PANEL_HEIGHT - min(a.get_window_extent().height for a in panels) / fig.dpi
    if short <= 0.02:
        return False
    rows = len({round(a.get_position().y0, 3) for a in panels})
    fig.set_figheight(fig.get_figheight() + short * rows)
    fig.canvas.draw()
    return True


def _wrappable(fig, canvas):
    """(text, the width it may take): a figure title the canvas; a panel's title and x label, which are
    centred on the panel, twice the distance from the panel's centre to the nearer canvas edge, and with
    several panels at most a little more than the panel's own width (so neighbours do not collide)."""
    for whole in (getattr(fig, "_suptitle", None), getattr(fig, "_supxlabel", None)):
        if whole is not None and whole.get_text():
            yield whole, 0.98 * canvas.width
    for ax in fig.axes:
        if not ax.get_visible() or not ax.axison:
            continue
        box = ax.get_window_extent()
        centre = (box.x0 + box.x1) / 2
        room = 1.96 * min(centre - canvas.x0, canvas.x1 - centre)
        panels = [a for a in fig.axes if a.get_visible() and a.axison and not hasattr(a, "_colorbar")]
        if len(panels) > 1:
            room = min(room, 1.1 * box.width)
        for text in (ax.title, ax.xaxis.label):
            if text.get_text():
                yield text, room
        if ax.yaxis.label.get_text():  # turned on its side: it may be as long as the panel is high
            yield ax.yaxis.label, 1.15 * box.height


def _rewrap(text, ratio: float) -> bool:
    """Wrap each line of ``text`` to ``ratio`` of its longest line's characters; False if it cannot shrink."""
    lines = text.get_text().split("\n")
    longest = max(len(line) for line in lines)
    width = max(12, int(longest * ratio * 0.95))
    if width >= longest:
        return False
    text.set_text("\n".join(wrapped for line in lines for wrapped in textwrap.wrap(line, width) or [""]))
    return True
