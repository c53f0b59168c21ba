"""``evalkit run TASK`` (one command per installed task plugin, its options from the task's options
dataclass), ``evalkit tasks``, ``evalkit sweep`` and ``evalkit export``."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from evalkit.cli.common import (
    DeviceOption,
    DType,
    DTypeOption,
    continue_command,
    make_console,
    new_group,
    print_continue,
    print_frame,
    user_errors,
)

run_app = new_group("Run a task on a model.")


# Options every ``run`` command shares, as (name, annotation, default).
COMMON_RUN_OPTIONS = [
    (
        "model",
        Annotated[
            list[str],
            typer.Option(
                help="Model folder (config.json + safetensors), .gguf file or folder, alias (smollm2-135m), or hub "
                "id; repeat for several models (one run folder each, under --out)."
            ),
        ],
        ["smollm2-135m"],
    ),
    (
        "attention",
        Annotated[
            str,
            typer.Option(
                help="Attention variant(s), comma-separated; auto = the checkpoint's own (its evalkit variant, "
                "else native)."
            ),
        ],
        "auto",
    ),
    (
        "ssmax_s",
        Annotated[
            Optional[str],
            typer.Option(
                help="SSMax scale s for every head (default: the checkpoint's per-head values); a list 0.3,0.4,0.5 "
                "runs one variant per value (a calibration sweep). So do the other variant parameters below."
            ),
        ],
        None,
    ),
    ("ssmax_b", Annotated[Optional[str], typer.Option(help="SSMax bias b for every head (ssmax-bias).")], None),
    (
        "attention_params",
        Annotated[Optional[str], typer.Option(help="Per-layer/head s and b tables: a .json or .safetensors file.")],
        None,
    ),
    (
        "train_length",
        Annotated[
            Optional[str], typer.Option(help="Training context length L for logn (default: max_position_embeddings).")
        ],
        None,
    ),
    (
        "ssmax_n",
        Annotated[
            Optional[str],
            typer.Option(
                help="n convention: position (keys query i may see) or length (whole row) [default: the "
                "checkpoint's, else position]."
            ),
        ],
        None,
    ),
    ("attn_scale", Annotated[Optional[str], typer.Option(help="llama4-temp: attn_scale [default 0.1].")], None),
    (
        "floor_scale",
        Annotated[Optional[str], typer.Option(help="llama4-temp: floor_scale in tokens [default 8192].")],
        None,
    ),
    ("beta", Annotated[Optional[str], typer.Option(help="mistral-beta: beta [default 0.1].")], None),
    (
        "original_length",
        Annotated[
            Optional[str], typer.Option(help="mistral-beta: original length L0 [default: max_position_embeddings].")
        ],
        None,
    ),
    (
        "calibrate_on",
        Annotated[
            Optional[str],
            typer.Option(
                help="With a sweep: choose each value on other samples, seed:N or dataset:PATH, run first into "
                "<out>-calibration [default: chosen on the evaluation data, marked as an oracle]."
            ),
        ],
        None,
    ),
    (
        "attention_layers",
        Annotated[
            Optional[str],
            typer.Option(
                help="Layers the variant is on: all, nope, rope (by the config's no_rope_layers) or indices like "
                "0,2,5; the others run softmax [default: all]."
            ),
        ],
        None,
    ),
    (
        "rope_theta",
        Annotated[Optional[float], typer.Option(help="Override the RoPE base theta at evaluation time.")],
        None,
    ),
    (
        "rope_scaling",
        Annotated[
            Optional[str], typer.Option(help="RoPE scaling: linear, dynamic, yarn or none (needs --rope-factor).")
        ],
        None,
    ),
    ("rope_factor", Annotated[Optional[float], typer.Option(help="RoPE scaling factor.")], None),
    ("out", Annotated[Optional[str], typer.Option(help="Run folder (default results/<task>-<model>-<time>).")], None),
    ("resume", Annotated[bool, typer.Option(help="Continue the run in --out, skipping finished samples.")], False),
    ("device", DeviceOption, "auto"),
    (
        "device_map",
        Annotated[Optional[str], typer.Option(help="auto: spread one large model over the visible GPUs (accelerate).")],
        None,
    ),
    ("dtype", DTypeOption, DType.auto),
    (
        "batch_tokens",
        Annotated[
            Optional[int],
            typer.Option(help="Tokens per batch (default: from free device memory); halves on out-of-memory."),
        ],
        None,
    ),
    (
        "prefix_cache",
        Annotated[
            bool,
            typer.Option(
                help="Compute a prompt prefix that several samples share once, on one KV cache (needle depths of a "
                "trial), for the groups where a cost measured on the model at the start says it beats batched passes."
            ),
        ],
        True,
    ),
    ("seed", Annotated[int, typer.Option(help="Seed for sample selection.")], 1234),
    (
        "allow_extrapolation",
        Annotated[bool, typer.Option(help="Run context lengths above the model's max_position_embeddings.")],
        False,
    ),
    (
        "allow_pickle",
        Annotated[bool, typer.Option(help="Allow pickle (.bin) checkpoints, which can run code when loaded.")],
        False,
    ),
    (
        "trust_remote_code",
        Annotated[bool, typer.Option(help="Allow checkpoints that ship their own modelling code.")],
        False,
    ),
    (
        "quiet",
        Annotated[
            bool,
            typer.Option(
                help="No progress bar, heartbeat lines or tables (a log without --quiet gets a progress line every "
                "30 s)."
            ),
        ],
        False,
    ),
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
    params = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
        for name, ann, default in COMMON_RUN_OPTIONS
    ]
    params += [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, annotation=_option_annotation(f, hints[f.name]), default=f.default
        )
        for f in task_fields
    ]

    @user_errors
    def command(**kwargs):
        given = {f.name: kwargs.pop(f.name) for f in task_fields}
        task_options = {f.name: given[f.name] for f in task_fields if given[f.name] != f.default}
        _run(task_name, task_options, **kwargs)

    command.__signature__ = inspect.Signature(params)
    command.__doc__ = task_cls.description
    run_app.command(name=task_name)(command)


def _run(
    task_name: str,
    task_options: dict,
    *,
    model,
    attention,
    ssmax_s,
    ssmax_b,
    attention_params,
    train_length,
    ssmax_n,
    attn_scale,
    floor_scale,
    beta,
    original_length,
    calibrate_on,
    attention_layers,
    rope_theta,
    rope_scaling,
    rope_factor,
    out,
    resume,
    device,
    device_map,
    dtype,
    batch_tokens,
    prefix_cache,
    seed,
    allow_extrapolation,
    allow_pickle,
    trust_remote_code,
    quiet,
) -> None:
    from evalkit.run.attention_flags import attention_flag_requests
    from evalkit.run.evaluate import RunConfig, check_config, default_parent, evaluate, model_folders

    console, errors = make_console(), make_console(stderr=True)
    # several models: one folder each under one parent, named from the specs alone, so the
    # continue command (which names the parent) finds the same folders again
    parent = (Path(out) if out else default_parent(task_name)) if len(model) > 1 else None
    folders = [str(parent / name) for name in model_folders(model)] if parent else [out]
    attention_requests = attention_flag_requests(
        attention,
        ssmax_s,
        ssmax_b,
        attention_params,
        train_length,
        ssmax_n,
        attn_scale=attn_scale,
        floor_scale=floor_scale,
        beta=beta,
        original_length=original_length,
        attention_layers=attention_layers,
    )
    configs = [
        RunConfig(
            task=task_name,
            model=spec,
            task_options=task_options,
            attention=attention_requests,
            rope={"theta": rope_theta, "scaling": rope_scaling, "factor": rope_factor},
            out=folder,
            resume=resume,
            device=device,
            device_map=device_map,
            dtype=dtype.value,
            batch_tokens=batch_tokens,
            prefix_cache=prefix_cache,
            seed=seed,
            allow_extrapolation=allow_extrapolation,
            allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code,
            quiet=quiet,
            calibrate_on=calibrate_on,
        )
        for spec, folder in zip(model, folders)
    ]
    for config in configs:  # a bad option or --out fails now, not after the first model ran
        check_config(config)
    if parent:
        errors.print(f"{len(model)} models, one run folder each under {parent}", highlight=False, soft_wrap=True)
    for config in configs:
        try:
            outcome = evaluate(config, console=errors)
        except KeyboardInterrupt:  # between samples (loading, writing tables): resuming loses nothing
            print_continue(errors, "interrupted", parent or config.out)
            raise typer.Exit(130) from None
        if outcome.frame is None:  # a data-parallel worker: rank 0 reports
            continue
        if outcome.interrupted:
            print_continue(
                errors, f"interrupted: {len(outcome.frame)} rows kept in {outcome.folder}", parent or outcome.folder
            )
            raise typer.Exit(130)
        if not quiet and outcome.summary is not None:
            from evalkit.report.stats import compact

            summary = outcome.summary
            notes = summary["note"].notna() if "note" in summary else None
            if (
                notes is not None
            ):  # a row that is only a note (a skipped task) reads better as a line than as a table row
                summary = summary[~notes].drop(columns="note")
            print_frame(console, compact(summary), f"{task_name} summary (95% intervals): {config.model}")
            for note in [] if notes is None else outcome.summary.loc[notes, "note"]:
                console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
        console.print(f"results: {outcome.folder}", highlight=False, soft_wrap=True)


def add_task_commands() -> None:
    """Add one ``run`` command per installed task plugin (once)."""
    from evalkit.core.registry import TASKS

    if not run_app.registered_commands:
        for name in TASKS.names():
            _make_run_command(name, TASKS.get(name))


def tasks_command() -> None:
    """List the installed task plugins."""
    from evalkit.core.registry import TASKS

    for name in TASKS.names():
        typer.echo(f"{name:12s} {TASKS.get(name).description}")


def backends_command() -> None:
    """List the installed backends and what each can do."""
    from evalkit.core.registry import BACKENDS

    for name in BACKENDS.names():
        backend = BACKENDS.get(name)
        declared = backend.declared()
        variants = "all" if declared.variants is None else (", ".join(sorted(declared.variants)) or "auto only")
        typer.echo(f"{name:13s} {backend.summary}")
        typer.echo(f"{'':13s} requests: {', '.join(sorted(declared.requests))}; variants: {variants}")


def sweep_command(
    config: Annotated[str, typer.Option(help="Study TOML: [[model]], [[attention]], [[task]] tables, seeds, out.")],
    resume: Annotated[bool, typer.Option(help="Skip finished cells and samples; continue interrupted ones.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the grid and its size, run nothing.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Run models x attention variants x tasks x seeds into one folder per (model, task)."""
    import pandas as pd

    from evalkit.run.sweep import check_study, load_study, run_study

    study = load_study(config)
    check_study(study, resume)
    variants = ", ".join(a.get("label") or a["name"] for a in study.attention)
    grid = pd.DataFrame(
        [
            {
                "model": c.model["path"],
                "task": c.task["name"],
                "seed": c.seed,
                "variants": variants,
                "lengths": c.task.get("lengths", "default"),
                "folder": str(c.folder),
            }
            for c in study.cells
        ]
    )
    print_frame(make_console(), grid, f"sweep: {len(study.cells)} runs x {len(study.attention)} attention variants")
    if dry_run:
        return
    try:
        outcomes = run_study(study, resume, quiet, console=make_console(stderr=True), log=typer.echo)
    except KeyboardInterrupt:
        outcomes = None
    if outcomes is None or (outcomes and outcomes[-1].interrupted):
        typer.echo(f"interrupted; continue with:\n  {continue_command()}", err=True)
        raise typer.Exit(130)
    for outcome in outcomes:
        typer.echo(f"results: {outcome.folder}")


def export_command(
    run: Annotated[str, typer.Argument(help="Run folder written by evalkit run.")],
    prompts: Annotated[
        str,
        typer.Option(
            help="JSONL file for the run's prompts: token ids and text, answers, keys and provenance, in the "
            "--samples-file format."
        ),
    ],
) -> None:
    """Write a run's exact prompts, rebuilt from its manifest, to recompute its rows outside evalkit."""
    from evalkit.run.export import export_prompts

    count = export_prompts(run, prompts, log=typer.echo)
    typer.echo(f"{count} prompts written to {prompts}")


def track_command(
    checkpoints: Annotated[
        list[str],
        typer.Argument(
            help="Checkpoint folders or globs (ckpts/checkpoint-*); the step comes from trainer_state.json's "
            "global_step, else the folder name."
        ),
    ],
    task: Annotated[
        list[str], typer.Option(help="Task(s) to run on every checkpoint (repeat, or comma-separated).")
    ] = ["needle"],  # noqa: B006 (typer reads the default; it is never mutated)
    lengths: Annotated[
        Optional[str], typer.Option(help="Context lengths, for every task that has them (1k..16k).")
    ] = None,
    trials: Annotated[Optional[int], typer.Option(help="Needle/focus trials per (length, depth).")] = None,
    set_option: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="Any other task option, OPTION=VALUE (repeatable): --set depths=0,50,100."),
    ] = None,
    attention: Annotated[
        str, typer.Option(help="Attention variant(s), comma-separated; auto = each checkpoint's own.")
    ] = "auto",
    ssmax_s: Annotated[
        Optional[str], typer.Option(help="SSMax scale s for every head (default: the checkpoint's per-head values).")
    ] = None,
    out: Annotated[
        str,
        typer.Option(
            help="Track folder: OUT/<series>/step-<N>/<task>/ runs, track.parquet, track_summary.csv, figures/."
        ),
    ] = "results/track",
    resume: Annotated[
        bool, typer.Option(help="Continue the track in --out: finished runs are skipped, new checkpoints added.")
    ] = False,
    device: DeviceOption = "auto",
    dtype: DTypeOption = DType.auto,
    seed: Annotated[int, typer.Option(help="Seed for sample selection (the same prompts at every step).")] = 1234,
    batch_tokens: Annotated[
        Optional[int], typer.Option(help="Tokens per batch (default: from free device memory).")
    ] = None,
    allow_extrapolation: Annotated[
        bool, typer.Option(help="Run context lengths above the model's max_position_embeddings.")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Evaluate a series of checkpoints, one model at a time: metric and effective length vs training step."""
    from evalkit.run.track import parse_set, run_track

    options = {
        **({"lengths": lengths} if lengths else {}),
        **({"trials": trials} if trials is not None else {}),
        **parse_set(set_option),
    }
    outcome = run_track(
        checkpoints,
        tasks=task,
        options=options,
        attention=attention,
        ssmax_s=ssmax_s,
        out=out,
        resume=resume,
        device=device,
        dtype=dtype.value,
        seed=seed,
        batch_tokens=batch_tokens,
        allow_extrapolation=allow_extrapolation,
        quiet=quiet,
        console=make_console(stderr=True),
        log=typer.echo,
    )
    if outcome.interrupted:
        typer.echo(f"interrupted; continue with:\n  {continue_command()}", err=True)
        raise typer.Exit(130)
    typer.echo(
        f"{len(outcome.evaluated)} run(s) evaluated, {len(outcome.skipped)} done before; tables: "
        f"{outcome.folder}/track_summary.csv"
    )
    for path in outcome.figures:
        typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.add_typer(run_app, name="run")
    app.command("tasks")(tasks_command)
    app.command("backends")(backends_command)
    app.command("sweep")(user_errors(sweep_command))
    app.command("export")(user_errors(export_command))
    app.command("track")(user_errors(track_command))
