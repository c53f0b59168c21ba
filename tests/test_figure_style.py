"""Every figure of every task, drawn on tiny runs and checked mechanically against the one style
(evalkit.report.draw): no text past the canvas, a band for every line whose legend claims one, a marker
on the series it names; and the figures issue 32 found wrong, each checked for what was wrong."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PolyCollection
from typer.testing import CliRunner

import cli
from evalkit.core.task import TaskContext
from evalkit.report import draw
from evalkit.report.figures import redraw_runs
from evalkit.run.evaluate import RunConfig, execute

runner = CliRunner()
APP = cli.register_tasks()


# -- the checks ----------------------------------------------------------------------------------


def words(text: str) -> str:
    """Text as read, whatever line breaks the fitting put in."""
    return " ".join(text.split())


def texts(fig):
    """Every piece of text a reader sees: titles, axis and tick labels, legends, annotations, cell values."""
    out = [t for t in [getattr(fig, "_suptitle", None), getattr(fig, "_supxlabel", None)] if t is not None]
    for ax in fig.axes:
        if not ax.get_visible() or not ax.axison and not ax.get_title():
            continue
        out += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis in (ax.xaxis, ax.yaxis):  # the ticks drawn (an axis keeps spare ones outside its view)
            out += [t.label1 for t in axis._update_ticks()] + [t.label2 for t in axis._update_ticks()]
    for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]:
        out += [legend.get_title(), *legend.get_texts()]
    return [t for t in out if t.get_visible() and t.get_text().strip()]


def rgb(colour):
    from matplotlib.colors import to_rgb

    return tuple(round(c, 3) for c in to_rgb(colour))


def has_band(ax, line) -> bool:
    """A fill in the line's colour spanning its points, or error bars in its colour at its points."""
    x = np.asarray(line.get_xdata(), dtype=float)
    x = x[np.isfinite(np.asarray(line.get_ydata(), dtype=float))]
    for c in ax.collections:
        colours = {rgb(f) for f in (c.get_facecolor() if isinstance(c, PolyCollection) else c.get_color())}
        if rgb(line.get_color()) not in colours:
            continue
        if isinstance(c, PolyCollection) and len(c.get_paths()):
            xs = np.concatenate([p.vertices[:, 0] for p in c.get_paths()])
            if xs.min() <= x.min() * (1 + 1e-9) and xs.max() >= x.max() * (1 - 1e-9) and len(x) > 1:
                return True
        if isinstance(c, LineCollection) and len(x) == 1:
            if any(np.isclose(seg[0][0], x[0]) for seg in c.get_segments()):
                return True
    return False


def problems(fig) -> list[str]:
    found = []
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    for t in texts(fig):
        box = t.get_window_extent(renderer)
        if box.x0 < canvas.x0 - 1 or box.x1 > canvas.x1 + 1 or box.y0 < canvas.y0 - 1 or box.y1 > canvas.y1 + 1:
            found.append(f"text cut at the canvas edge: {t.get_text()!r}")
    boxes = [(t.get_text(), t.get_window_extent(renderer).padded(-0.5)) for t in texts(fig)]
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1 :]:
            if box_a.overlaps(box_b):
                found.append(f"texts over one another: {a!r} and {b!r}")
    for ax in fig.axes:  # on a heatmap only the cell values may sit over the cells
        if ax.images:
            inside = ax.get_window_extent(renderer)
            for t in [*ax.texts, *[a for a in ax.get_children() if hasattr(a, "xyann")]]:
                if t.get_text() and t.get_ha() != "center" and t.get_window_extent(renderer).overlaps(inside):
                    found.append(f"text over a heatmap's cells: {t.get_text()!r}")
    lines = {words(line.get_label()): (ax, line) for ax in fig.axes for line in ax.get_lines()}
    for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]:
        claims = draw.BAND_NOTE in legend.get_title().get_text()
        for entry in legend.get_texts():
            label = words(entry.get_text())  # a long entry is wrapped in the legend
            if label not in lines:
                continue
            ax, line = lines[label]
            reference = line.get_transform() != ax.transData or not len(line.get_xdata())  # axvline, threshold, key
            wants = (claims and not reference and draw.NO_INTERVAL not in label) or "band" in label
            if wants and not has_band(ax, line):
                found.append(f"legend claims a band that is not drawn: {label!r}")
    for ax in fig.axes:
        for ring in [line for line in ax.get_lines() if line.get_label().startswith("_effective ")]:
            variant = ring.get_label().removeprefix("_effective ")
            named = [
                line
                for line in ax.get_lines()
                if line.get_label() == variant or line.get_label().startswith(f"{variant}: ")
            ]
            x, y = ring.get_xdata()[0], ring.get_ydata()[0]
            on = [
                line
                for line in named
                if rgb(line.get_color()) == rgb(ring.get_markeredgecolor())
                and any(np.isclose(x, a) and np.isclose(y, b) for a, b in zip(line.get_xdata(), line.get_ydata()))
            ]
            if not on:
                found.append(f"effective-length marker of {variant} is not on {variant}'s line")
    return found


@pytest.fixture
def drawn(monkeypatch):
    """Every figure saved while the test runs, by file name, checked as it was written."""
    from pathlib import Path

    figures = {}
    save = draw.save

    def checked(fig, path):
        out = save(fig, path)
        figures[Path(path).stem] = fig
        fig.evalkit_problems = problems(fig)
        return out

    plt = draw.pyplot()
    close = plt.close
    monkeypatch.setattr(draw, "save", checked)
    monkeypatch.setattr(plt, "close", lambda fig=None: None)  # keep them for the test to read
    yield figures
    for fig in figures.values():
        close(fig)


# -- every figure of every task on tiny runs -----------------------------------------------------


def run(task, checkpoint, out, options, attention=("softmax", "ssmax"), **extra):
    variants = tuple({"name": a, "s": 0.5} if a == "ssmax" else {"name": a} for a in attention)
    config = RunConfig(
        task, str(checkpoint), options, variants, out=str(out), device="cpu", quiet=True, plots=False, **extra
    )
    return execute(config).folder


@pytest.fixture(scope="module")
def tiny_runs(tiny_checkpoint, tmp_path_factory):
    from evalkit.backends.transformers import TransformersBackend
    from evalkit.core.registry import BACKENDS

    if "transformers" not in BACKENDS.names():  # an install whose entry points predate the backends
        BACKENDS.register("transformers", TransformersBackend)
    out = tmp_path_factory.mktemp("runs")
    return {
        "perplexity": run("perplexity", tiny_checkpoint, out / "ppl", {"lengths": "64,128", "samples": 2}),
        "longppl": run(
            "perplexity",
            tiny_checkpoint,
            out / "longppl",
            {"lengths": "64,128", "samples": 2, "metric": "longppl", "short_context": "32", "short_stride": "16"},
            attention=("softmax",),
        ),
        "needle": run(
            "needle", tiny_checkpoint, out / "needle", {"lengths": "128,192", "depths": "0,100", "trials": 1}
        ),
        "focus": run("focus", tiny_checkpoint, out / "focus", {"lengths": "128,192", "depths": "50", "trials": 2}),
        "analytic": run("focus", tiny_checkpoint, out / "analytic", {"analytic": True, "lengths": "64,128"}),
        "ruler": run(
            "ruler",
            tiny_checkpoint,
            out / "ruler",
            {"tasks": "niah_single_1,niah_single_2", "lengths": "300", "samples": 1, "fill": "exact"},
            attention=("softmax",),
        ),
    }


FIGURES = {
    "perplexity": {"loss_vs_position", "perplexity_vs_length"},
    "longppl": {"loss_vs_position", "perplexity_vs_length", "longppl_vs_length"},
    "needle": {"needle_heatmap", "accuracy_vs_length", "answer_logprob_vs_length"},
    "focus": {"needle_mass_vs_length", "needle_mass_layer_head", "entropy_norm_vs_length"},
    "analytic": {"analytic_max_weight"},
    "ruler": {"ruler_score_per_task", "ruler_average_vs_length"},
}


@pytest.mark.parametrize("task", sorted(FIGURES))
def test_every_figure_of_every_task_keeps_the_style(task, tiny_runs, drawn, tmp_path):
    written = redraw_runs([str(tiny_runs[task])], str(tmp_path), ["png", "pdf", "svg"])
    assert set(drawn) == FIGURES[task]
    for name, fig in drawn.items():
        assert fig.evalkit_problems == [], name
        assert fig.get_figwidth() <= draw.TEXT_WIDTH + 1e-9  # a paper's width, one column or the full text
        for fmt in ("png", "pdf", "svg"):
            assert tmp_path / tiny_runs[task].name / f"{name}.{fmt}" in written
    assert (tmp_path / tiny_runs[task].name / f"{sorted(drawn)[0]}.pdf").read_bytes()[:5] == b"%PDF-"


def test_plot_command_writes_the_formats_asked_for(tiny_runs, drawn, tmp_path):
    result = runner.invoke(
        APP, ["plot", str(tiny_runs["needle"]), str(tiny_runs["focus"]), "--out", str(tmp_path), "--format", "pdf"]
    )
    assert result.exit_code == 0, result.output
    assert {p.suffix for p in tmp_path.iterdir()} == {".png", ".pdf", ".csv"}
    for name, fig in drawn.items():
        assert fig.evalkit_problems == [], name
    # attention mass lies far below 1: the axis is zoomed to it, not fixed at 0-1
    (ax,) = [a for a in drawn["focus_needle_mass_vs_length"].axes]
    points = pd.read_csv(tmp_path / "focus_needle_mass_vs_length.csv")
    top = ax.get_ylim()[1]
    assert points.ci_high.max() <= top < max(0.5, 2 * points.ci_high.max())
    result = runner.invoke(APP, ["plot", str(tiny_runs["needle"]), "--out", str(tmp_path), "--format", "eps"])
    assert result.exit_code == 2
    result = runner.invoke(APP, ["plot", str(tiny_runs["needle"]), "--run-figures", "--metric", "x"])
    assert result.exit_code == 2 and "--run-figures" in result.output


# -- what issue 32 found, figure by figure -------------------------------------------------------


def nll_rows(nested: bool):
    """Windows of 512, 1k, 2k tokens; nested: the shorter windows are the longer ones' starts (same numbers)."""
    rng = np.random.default_rng(0)
    rows = []
    for sample in range(4):
        curve = {2**k: 2.0 + 8.0 / (k + 1) + rng.normal(0, 0.2) for k in range(11)}
        for length in (512, 1024, 2048):
            for start, nll in curve.items():
                if start < length:
                    value = nll if nested else nll + length / 2048
                    rows.append(
                        {
                            "attention": "softmax",
                            "context_length": length,
                            "sample": sample,
                            "position_bin": start,
                            "position_end": min(2 * start, length),
                            "metric": "nll",
                            "value": value,
                        }
                    )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("nested", [True, False])
def test_loss_vs_position_draws_nested_lengths_once_and_zooms_past_position_one(nested, drawn, tmp_path):
    from tasks.perplexity_plots import loss_vs_position

    bins = nll_rows(nested)
    loss_vs_position(bins, ("context_length", "sample"), "t", 8192, tmp_path / "loss.png")
    fig = drawn["loss"]
    assert fig.evalkit_problems == []
    (ax,) = fig.axes
    entries = [words(t.get_text()) for t in fig.legends[0].get_texts()]
    if nested:
        assert entries == ["L = 2k; 512, 1k: its first tokens, same values"]
    else:
        assert entries == ["L = 512", "L = 1k", "L = 2k"]
    first = bins[bins.position_bin == 1].groupby("context_length").value.mean()
    assert ax.get_ylim()[1] < first.min()  # position 1 (NLL ~10) no longer sets the range ...
    carets = [line for line in ax.get_lines() if line.get_label() == "_above"]
    assert len(carets) == len(entries) and all(line.get_ydata()[0] == ax.get_ylim()[1] for line in carets)
    assert f"up to {first.max():.3g}" in words(ax.get_xlabel())  # ... it is marked at the top, its value said
    assert "training length 8k" in words(ax.get_xlabel())  # beyond the axis: said under it, not over the data


def needle_summary():
    """softmax passes the threshold up to 1k; ssmax never does (no effective length)."""
    rows = []
    for attention, accuracy in (("softmax", [1.0, 0.9, 0.1]), ("ssmax", [0.2, 0.0, 0.0])):
        for length, a in zip((512, 1024, 2048), accuracy):
            rows.append(
                {
                    "attention": attention,
                    "context_length": length,
                    "n": 20,
                    "units": 20,
                    "accuracy": a,
                    "accuracy_ci_low": max(0.0, a - 0.1),
                    "accuracy_ci_high": min(1.0, a + 0.1),
                }
            )
        effective = (1024, 512, 1024) if attention == "softmax" else (np.nan, np.nan, 512)
        rows.append(
            {
                "attention": attention,
                "context_length": "all",
                "threshold": 0.856,
                "effective_length": effective[0],
                "effective_length_ci_low": effective[1],
                "effective_length_ci_high": effective[2],
            }
        )
    return pd.DataFrame(rows)


def test_effective_length_sits_on_its_own_line_and_none_is_said_one_way(drawn, tmp_path):
    from evalkit.report.stats import compact
    from tasks.needle_plots import accuracy_vs_length

    summary = needle_summary()
    accuracy_vs_length(summary, "t", 8192, tmp_path / "acc.png")
    fig = drawn["acc"]
    assert fig.evalkit_problems == []
    (ax,) = fig.axes
    rings = [line for line in ax.get_lines() if line.get_label().startswith("_effective ")]
    assert [r.get_label() for r in rings] == ["_effective softmax"]  # ssmax has none: no marker at all
    assert rings[0].get_ydata()[0] == pytest.approx(0.9)  # softmax's own point at 1k, not the axis floor
    entries = [words(t.get_text()) for t in fig.legends[0].get_texts()]
    assert "softmax: effective length 1k [512, 1k]" in entries
    assert "ssmax: effective length none [none, 512]" in entries
    assert not any("shortest" in e for e in entries)
    table = compact(summary)
    assert list(table[table.context_length == "all"].effective_length) == ["1024 [512, 1024]", "none [none, 512]"]


def test_heatmap_says_the_training_length_outside_the_cells(drawn, tmp_path):
    from tasks.needle_plots import heatmaps

    acc = pd.DataFrame(
        [
            {"attention": "softmax", "context_length": n, "depth": d, "trial": t, "value": float(t % 2)}
            for n in (1024, 2048)
            for d in (0, 50, 100)
            for t in range(4)
        ]
    )
    for train in (8192, 1024):  # past the axis, and between the columns
        heatmaps(acc, "t", train, tmp_path / f"heat{train}.png")
        assert drawn[f"heat{train}"].evalkit_problems == []
    assert "training length 8k" in words(drawn["heat8192"].axes[0].get_xlabel())
    assert "dashed line: training length 1k" in words(drawn["heat1024"].axes[0].get_xlabel())


def test_focus_top_heads_say_they_have_no_interval_and_how_they_were_picked(drawn, tmp_path):
    from tasks.focus import FocusOptions, FocusTask

    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        [
            {
                "attention": a,
                "context_length": n,
                "depth": 50,
                "trial": t,
                "layer": l,
                "head": h,
                "metric": m,
                "value": float(rng.uniform(0, 0.1) * (3 if (l, h) == (1, 2) else 1)),
            }
            for a in ("softmax", "ssmax")
            for n in (512, 1024)
            for t in range(4)
            for l in range(2)
            for h in range(4)
            for m in ("needle_mass", "entropy_norm", "top1_in_needle", "entropy", "max_weight", "needle_rank")
        ]
    )
    task = FocusTask(FocusOptions(lengths="512,1k", depths="50", trials=4), TaskContext(None, None, True, 0, 4096))
    task.plot(frame, "t", tmp_path)
    fig = drawn["needle_mass_vs_length"]
    assert fig.evalkit_problems == []
    entries = [words(t.get_text()) for t in fig.legends[0].get_texts()]
    top = [e for e in entries if "top" in e]
    assert len(top) == 2 and all(draw.NO_INTERVAL in e and "L1H2" in e for e in top)
    assert all("by mass on these same samples" in e and "optimistic" in e for e in top)
    assert fig.axes[0].get_ylim()[1] < 0.5  # zoomed to masses of 0-0.3


def test_ruler_average_title_fits_and_names_the_task_count_once(tiny_runs, drawn, tmp_path):
    redraw_runs([str(tiny_runs["ruler"])], str(tmp_path))
    fig = drawn["ruler_average_vs_length"]
    title = words(fig._suptitle.get_text())
    assert title.count("of 13 tasks") == 1 and "not RULER-comparable: --fill exact" in title
    assert fig.evalkit_problems == []


def test_the_checks_catch_what_they_check(tmp_path):
    """The checker itself: a clipped title, a band claimed but not drawn, a marker on another line."""
    fig, ax = draw.figure()
    ax.plot([1, 2], [0.1, 0.2], color=draw.variant_colour("softmax"), label="softmax")
    ax.plot([1, 2], [0.5, 0.6], color=draw.variant_colour("ssmax"), label="ssmax")
    ax.plot([2], [0.6], "o", markeredgecolor=draw.variant_colour("ssmax"), label="_effective softmax")
    fig.suptitle("a title far too long for one column of a paper, and never wrapped by anyone at all " * 2)
    fig.legend(title=draw.BAND_NOTE)
    found = problems(fig)
    assert any("cut at the canvas edge" in p for p in found)
    assert sum("claims a band" in p for p in found) == 2
    assert any("not on softmax's line" in p for p in found)
    draw.fit_text(fig)  # and the style's own fitting cures the first
    assert not any("cut at the canvas edge" in p for p in problems(fig))
    draw.pyplot().close(fig)
