"""``evalkit compare``, ``evalkit gate`` and ``evalkit plot``: the numbers people decide from, across runs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from evalkit.cli.common import make_console, user_errors


class ReportFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    json = "json"


def _report(module, result, fmt: ReportFormat, junit: Optional[str]) -> None:
    """Print a comparison or gate report, write JUnit XML if asked, exit with its code."""
    if fmt is ReportFormat.table:
        make_console().print(module.to_rich_table(result))
    else:
        typer.echo(getattr(module, f"to_{fmt.value}")(result))
    if junit:
        Path(junit).write_text(module.to_junit(result))
    raise typer.Exit(result.exit_code)


def compare_command(
    baseline: Annotated[str, typer.Argument(help="Baseline run folder (or a folder of runs, e.g. a sweep's out).")],
    candidate: Annotated[
        Optional[str],
        typer.Argument(help="Candidate run folder; omit to take both sides from BASELINE with the selectors."),
    ] = None,
    base_select: Annotated[
        Optional[list[str]],
        typer.Option(
            "--baseline",
            help="Select the baseline's rows: KEY=VALUE with KEY attention, model, run, seed, or step and series "
            "(evalkit track's runs) (repeatable; VALUE may be a comma list).",
        ),
    ] = None,
    cand_select: Annotated[
        Optional[list[str]], typer.Option("--candidate", help="Select the candidate's rows, as --baseline.")
    ] = None,
    tolerance: Annotated[
        Optional[float],
        typer.Option(
            help="Allowed worsening per metric (absolute; see --relative), on top of a float floor of 1e-9 + 1e-6 "
            "x |baseline|."
        ),
    ] = None,
    relative: Annotated[bool, typer.Option(help="Read --tolerance as a fraction of the baseline value.")] = False,
    confidence: Annotated[
        float, typer.Option(help="A regression must be beyond noise at this confidence (p < 1 - confidence).")
    ] = 0.95,
    strict: Annotated[bool, typer.Option(help="Fail on any worsening beyond the tolerance, noise or not.")] = False,
    allow_missing: Annotated[
        bool, typer.Option(help="Pass although the candidate lacks cells the baseline has.")
    ] = False,
    unpaired: Annotated[
        bool,
        typer.Option(
            help="Treat the sides as independent samples; differing task options or tokenizers become notes, not "
            "failures."
        ),
    ] = False,
    threshold: Annotated[
        str,
        typer.Option(
            help="Effective context length threshold: an accuracy (default 0.856, RULER's) or rel:F, F x the "
            "accuracy at the shortest length."
        ),
    ] = "0.856",
    nll_tolerance: Annotated[
        Optional[float],
        typer.Option(
            help="Perplexity tolerance given once, in NLL (nats per token); the perplexity row follows through exp."
        ),
    ] = None,
    tolerances: Annotated[
        Optional[str],
        typer.Option(help="TOML file of per-metric tolerances: metric = absolute, or { absolute = A, relative = R }."),
    ] = None,
    correction: Annotated[
        str, typer.Option(help="Family-wise error control over the judged cells: holm (default), bonferroni or none.")
    ] = "holm",
    detect: Annotated[
        Optional[float],
        typer.Option(
            help="A worsening each cell must be able to detect (metric units); cells that cannot are underpowered."
        ),
    ] = None,
    power: Annotated[float, typer.Option(help="Power for each cell's minimal detectable worsening.")] = 0.8,
    require_power: Annotated[
        bool, typer.Option(help="Fail (exit 1) on an underpowered cell instead of warning.")
    ] = False,
    allow_dtype_change: Annotated[
        bool, typer.Option(help="A dtype difference between the runs is a note, not a failing check.")
    ] = False,
    format: Annotated[
        ReportFormat, typer.Option(help="table, markdown (for a pull-request comment) or json.")
    ] = ReportFormat.table,
    junit: Annotated[Optional[str], typer.Option(help="Also write a JUnit XML report here.")] = None,
) -> None:
    """Compare a baseline with a candidate: two runs, or two selections (variants, checkpoints, seeds) of runs.

    Paired prompt by prompt when both sides share prompts (exact McNemar for 0/1 metrics, paired t
    per unit otherwise), else unpaired. Exit 0: pass. Exit 1: a regression (worse than the tolerance
    AND beyond noise; --strict: beyond the tolerance), or an unsafe comparison: an interrupted or
    incomplete run, cells the candidate lacks, differing task options, tokenizer or prompts, a drop
    in effective context length beyond noise. Exit 2: bad input.
    """
    from evalkit.report import compare

    result = compare.compare_runs(
        baseline,
        candidate,
        base_select=base_select,
        cand_select=cand_select,
        tolerance=tolerance,
        relative=relative,
        confidence=confidence,
        strict=strict,
        allow_missing=allow_missing,
        unpaired=unpaired,
        threshold=threshold,
        correction=correction,
        detect=detect,
        power=power,
        require_power=require_power,
        allow_dtype_change=allow_dtype_change,
        nll_tolerance=nll_tolerance,
        tolerances_file=tolerances,
    )
    _report(compare, result, format, junit)


def plan_command(
    baseline: Annotated[
        Optional[str], typer.Option(help="A baseline run: its own spread across units sizes the grid.")
    ] = None,
    accuracy: Annotated[
        Optional[list[float]], typer.Option(help="Or stated accuracies (repeatable), the units as the sample.")
    ] = None,
    detect: Annotated[
        float, typer.Option(help="The worsening to detect, in metric units (0.10 = ten accuracy points).")
    ] = 0.1,
    power: Annotated[float, typer.Option(help="Probability of detecting it.")] = 0.8,
    confidence: Annotated[float, typer.Option(help="As compare's --confidence.")] = 0.95,
    cells: Annotated[
        Optional[int], typer.Option(help="Cells in the compare's family (default: the baseline's judged cells, or 6).")
    ] = None,
) -> None:
    """How many trials (needle) or windows (perplexity) a grid needs to detect a drop at a power."""
    from evalkit.report import power as planning

    typer.echo(planning.to_text(planning.plan(baseline, accuracy, detect, power, confidence, cells)))


def gate_command(
    candidate: Annotated[str, typer.Argument(help="Run folder to check.")],
    config: Annotated[
        str,
        typer.Option(
            help="Gates TOML: [[gate]] tables with task, metric, op and a threshold (format shown in this help)."
        ),
    ],
    baseline: Annotated[
        Optional[str],
        typer.Option(
            help="Baseline run for relative gates, from the current folder (overrides the file's baseline, which "
            "is read from the TOML file's folder)."
        ),
    ] = None,
    format: Annotated[ReportFormat, typer.Option(help="table, markdown or json.")] = ReportFormat.table,
    junit: Annotated[Optional[str], typer.Option(help="Also write a JUnit XML report here.")] = None,
) -> None:
    """Check a run against thresholds from a file; exit 1 when any gate fails or the run is interrupted or incomplete.

    Each gate reports its value with n and a 95% interval. The point value decides, unless the gate
    sets require = "ci": then the whole interval must be on the passing side. Exit 2: a bad gate
    file or run folder.

    \b
    The gate file (TOML; docs/statistics-and-ci.md, "Gates"):
      baseline = "results/base"    # optional: the run baseline_factor/baseline_delta read;
                                   # a relative path is read from this file's folder
      [[gate]]
      name = "needle at 8k"        # optional, shown in reports
      task = "needle"              # required; gates of another task are skipped
      metric = "greedy_correct"    # required: a metric of the run (or perplexity)
      op = ">="                    # required: >=, <=, > or <
      value = 0.9                  # the threshold: exactly one of value,
      # baseline_factor = 1.02     #   the baseline's value x 1.02,
      # baseline_delta = -0.05     #   the baseline's value - 0.05
      attention = "softmax"        # optional; default: each variant, separately
      context_length = "8k"        # optional; default "all": the mean over lengths
      require = "ci"               # optional: "value" (default) or "ci"
      baseline = "results/other"   # optional: this gate's own baseline run
    """
    from evalkit.report import gate

    result = gate.check_gates(candidate, gate.load_gates(config), baseline_dir=baseline)
    _report(gate, result, format, junit)


class Aggregate(str, Enum):
    seeds = "seeds"


class XAxis(str, Enum):
    length = "length"
    step = "step"


class FigureFormat(str, Enum):
    svg = "svg"
    pdf = "pdf"
    png = "png"


def plot_command(
    runs: Annotated[list[str], typer.Argument(help="Run folders written by evalkit run.")],
    out: Annotated[str, typer.Option(help="Folder for the figures.")] = "fig",
    metric: Annotated[
        Optional[str],
        typer.Option(help="Plot this metric (e.g. entropy_norm, answer_logprob) instead of each task's headline."),
    ] = None,
    label: Annotated[
        Optional[list[str]],
        typer.Option(
            help="A legend label per run, in order (repeat: --label a --label b). Default: the model, made unique "
            "with the run folder."
        ),
    ] = None,
    aggregate: Annotated[
        Optional[Aggregate],
        typer.Option(
            help="seeds: runs that differ only in --seed become one line, the mean with a 95% interval from the "
            "spread across seeds."
        ),
    ] = None,
    x: Annotated[
        XAxis,
        typer.Option(
            help="length: metric vs context length; step: metric and effective length vs training step, from "
            "evalkit track's (or the training callback's) folder, one panel per length."
        ),
    ] = XAxis.length,
    format: Annotated[
        Optional[list[FigureFormat]],
        typer.Option(
            help="Vector format written besides PNG, sized for one column of a paper (repeatable: --format pdf "
            "--format svg). Default: svg."
        ),
    ] = None,
    run_figures: Annotated[
        bool,
        typer.Option(
            help="Draw each run's own figures (those in RUN/plots) again from its tables, into OUT/<run folder>/, "
            "e.g. with --format pdf for a paper."
        ),
    ] = False,
) -> None:
    """Length-generalization figures across runs: one line per (run, attention variant) with its 95% band; the points
    also as CSV. With --run-figures: each run's own figures, in the formats asked for."""
    from evalkit.core.errors import ConfigError
    from evalkit.report.figures import plot_runs, redraw_runs
    from evalkit.report.steps import plot_steps

    formats = ["png", *(f.value for f in format or [FigureFormat.svg])]
    if x is XAxis.step and (label or aggregate or format):
        raise ConfigError(
            "--label, --aggregate and --format apply to --x length", "leave them out with --x step (PNG and SVG)"
        )
    if run_figures and (label or aggregate or metric or x is XAxis.step):
        raise ConfigError(
            "--run-figures draws each run's own figures: --label, --aggregate, --metric and --x do not apply",
            "leave them out with --run-figures",
        )
    if run_figures:
        paths = redraw_runs(runs, out, formats)
    elif x is XAxis.step:
        paths = plot_steps(runs, out, metric)
    else:
        paths = plot_runs(runs, out, metric, label, aggregate.value if aggregate else None, formats)
    for path in paths:
        typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.command("compare")(user_errors(compare_command))
    app.command("plan")(user_errors(plan_command))
    app.command("gate")(user_errors(gate_command))
    app.command("plot")(user_errors(plot_command))
