"""``evalkit run TASK`` (one command per installed task plugin: its options from the task's options
dataclass, the run settings from ``evalkit.core.settings``), ``evalkit tasks``, ``evalkit sweep``,
``evalkit export`` and ``evalkit track``."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from evalkit.cli.common import (
    continue_command,
    make_console,
    new_group,
    print_continue,
    print_frame,
    print_interrupted,
    user_errors,
)
from evalkit.core import settings

run_app = new_group("Run a task on a model.")


def setting_parameter(setting) -> inspect.Parameter:
    """A command-line parameter for one run setting of ``evalkit.core.settings``, in its help panel."""
    kind = setting.type
    if type(None) in typing.get_args(kind):  # X | None -> Optional[X]; typer wants typing.Optional
        kind = Optional[next(a for a in typing.get_args(kind) if a is not type(None))]
    help_text = setting.help + (f" [{'|'.join(setting.choices)}]" if setting.choices else "")
    option = typer.Option(help=help_text, rich_help_panel=setting.panel)
    return inspect.Parameter(
        setting.name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[kind, option], default=setting.default
    )


def _option_annotation(f: dataclasses.Field, hint, panel: str = settings.TASK):
    help_text = f.metadata.get("help", "")
    if f.metadata.get("choices"):
        help_text += f" [{'|'.join(f.metadata['choices'])}]"
    args = typing.get_args(hint)
    if type(None) in args:  # X | None -> Optional[X]; typer wants typing.Optional
        hint = Optional[next(a for a in args if a is not type(None))]
    return Annotated[hint, typer.Option(help=help_text, rich_help_panel=panel)]


def _options_parameters(options_cls, panel: str) -> list[inspect.Parameter]:
    """Command-line parameters for an options dataclass (a task's, or a backend's own)."""
    hints = typing.get_type_hints(options_cls)
    return [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=_option_annotation(f, hints[f.name], panel),
            default=f.default,
        )
        for f in dataclasses.fields(options_cls)
    ]


def _backend_parameter(backend: str, f: dataclasses.Field) -> inspect.Parameter:
    from evalkit.core.registry import BACKENDS

    hint = typing.get_type_hints(BACKENDS.get(backend).Options)[f.name]
    annotation = _option_annotation(f, hint, f"Backend: {backend} (with --backend {backend})")
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=f.default)


def backend_option_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Every installed backend's own options by name: (backend, field). Their flags are shared by every
    `evalkit run TASK` and go to that backend only (``RunConfig.backend_options``)."""
    from evalkit.core.registry import BACKENDS

    found: dict[str, tuple[str, dataclasses.Field]] = {}
    for name in BACKENDS.names():
        options = BACKENDS.get(name).Options
        for f in dataclasses.fields(options) if options else ():
            found.setdefault(f.name, (name, f))
    return found


def _make_run_command(task_name: str, task_cls) -> None:
    task_fields = dataclasses.fields(task_cls.Options)
    backend_fields = {k: v for k, v in backend_option_fields().items() if k not in {f.name for f in task_fields}}
    params = [setting_parameter(s) for s in settings.settings_for(settings.CLI)]
    params += _options_parameters(task_cls.Options, settings.TASK)
    params += [_backend_parameter(backend, f) for backend, f in backend_fields.values()]
    params.sort(key=lambda p: _panel_order(p.annotation))  # typer lists panels in the order it first meets them

    @user_errors
    def command(**kwargs):
        given = {f.name: kwargs.pop(f.name) for f in task_fields}
        task_options = {f.name: given[f.name] for f in task_fields if given[f.name] != f.default}
        backend_options = {}
        for name, (backend, f) in backend_fields.items():
            value = kwargs.pop(name)
            if value != f.default:
                backend_options[name] = (backend, value)
        _run(task_name, task_options, kwargs, backend_options)

    command.__signature__ = inspect.Signature(params)
    command.__doc__ = task_cls.description
    run_app.command(name=task_name, help=task_cls.description, short_help=task_cls.description)(command)


def _panel_order(annotation) -> int:
    panel = next((getattr(a, "rich_help_panel", None) for a in typing.get_args(annotation)[1:]), None)
    return settings.PANELS.index(panel) if panel in settings.PANELS else len(settings.PANELS)


def _backend_options(backend: str, given: dict[str, tuple[str, object]]) -> dict:
    """The given backend flags, each checked to belong to the run's backend (one line if not)."""
    from evalkit.core.errors import ConfigError

    for name, (owner, _value) in given.items():
        if owner != backend:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} is an option of the {owner} backend", f"add --backend {owner}, or drop {flag}")
    return {name: value for name, (_owner, value) in given.items()}


def _run(task_name: str, task_options: dict, given: dict, backend_flags: dict | None = None) -> None:
    """Check everything that needs no model (settings and the task's grid first: no torch is imported
    before a mistake there is reported), then every model's checkpoint, then run the models in turn."""
    values = settings.check_settings(given, settings.CLI)
    backend_options = _backend_options(values["backend"], backend_flags or {})
    from evalkit.run.evaluate import check_task_options

    check_task_options(task_name, task_options, values["seed"], values["allow_extrapolation"])
    if values["calibrate_on"]:  # an option's own format, before any checkpoint is read
        from evalkit.core.registry import get_task
        from evalkit.run.calibration import parse_calibrate_on

        parse_calibrate_on(values["calibrate_on"], get_task(task_name))
    from evalkit.run.evaluate import RunConfig, check_checkpoint

    layers = values["attention_layers"]
    for spec in values["model"]:  # each checkpoint's config.json, still before torch: layers, lengths
        attention = ({"name": "auto", "layers": layers},) if layers else RunConfig.attention
        limits = {"rope": settings.rope_of(values), "allow_extrapolation": values["allow_extrapolation"]}
        check_checkpoint(RunConfig(task_name, spec, task_options, attention, **limits))

    from evalkit.run.attention_flags import attention_flag_requests
    from evalkit.run.evaluate import check_config, default_parent, execute, model_folders

    console, errors = make_console(), make_console(stderr=True)
    model, out, quiet = values["model"], values["out"], values["quiet"]
    # several models: one folder each under one parent, named from the specs alone, so the
    # continue command (which names the parent) finds the same folders again
    parent = (Path(out) if out else default_parent(task_name)) if len(model) > 1 else None
    folders = [str(parent / name) for name in model_folders(model)] if parent else [out]
    flags = {name: values[name] for name in settings.names(settings.CLI, "attention") if name != "attention"}
    requests = attention_flag_requests(values["attention"], **flags)
    fields = {s.name: values[s.name] for s in settings.config_fields()}
    configs = [
        RunConfig(
            task=task_name,
            model=spec,
            task_options=task_options,
            attention=requests,
            rope=settings.rope_of(values),
            backend_options=backend_options,
            **{**fields, "out": folder},
        )
        for spec, folder in zip(model, folders)
    ]
    for config in configs:  # a bad option or --out fails now, not after the first model ran
        check_config(config)
    if values["resume"] and not Path(parent or out).exists():
        errors.print(f"note: --resume: {parent or out} does not exist yet; starting a new run there", soft_wrap=True)
    if parent:
        errors.print(f"{len(model)} models, one run folder each under {parent}", highlight=False, soft_wrap=True)
    for config in configs:
        try:
            outcome = execute(config, console=errors)
        except KeyboardInterrupt as exc:  # outside the samples (loading, writing tables): resuming loses nothing
            print_interrupted(errors, exc, parent or config.out)
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


def _track_parameters() -> list[inspect.Parameter]:
    """``evalkit track``'s own options, then every run setting a track accepts (evalkit.core.settings)."""
    own = [
        (
            "checkpoints",
            Annotated[
                list[str],
                typer.Argument(
                    help="Checkpoint folders or globs (ckpts/checkpoint-*); the step comes from trainer_state.json's "
                    "global_step, else the folder name."
                ),
            ],
            inspect.Parameter.empty,
        ),
        (
            "task",
            Annotated[
                list[str],
                typer.Option(
                    help="Task(s) to run on every checkpoint (repeat, or comma-separated).",
                    rich_help_panel=settings.TASK,
                ),
            ],
            ["needle"],
        ),
        (
            "lengths",
            Annotated[
                Optional[str],
                typer.Option(
                    help="Context lengths, for every task that has them (1k..16k).", rich_help_panel=settings.TASK
                ),
            ],
            None,
        ),
        (
            "trials",
            Annotated[
                Optional[int],
                typer.Option(help="Needle/focus trials per (length, depth).", rich_help_panel=settings.TASK),
            ],
            None,
        ),
        (
            "set_option",
            Annotated[
                Optional[list[str]],
                typer.Option(
                    "--set",
                    help="Any other task option, OPTION=VALUE (repeatable): --set depths=0,50,100.",
                    rich_help_panel=settings.TASK,
                ),
            ],
            None,
        ),
        (
            "out",
            Annotated[
                str,
                typer.Option(
                    help="Track folder: OUT/<series>/step-<N>/<task>/ runs, track.parquet, track_summary.csv, "
                    "figures/.",
                    rich_help_panel=settings.OUTPUT,
                ),
            ],
            "results/track",
        ),
        (
            "resume",
            Annotated[
                bool,
                typer.Option(
                    help="Continue the track in --out: finished runs are skipped, new checkpoints added.",
                    rich_help_panel=settings.OUTPUT,
                ),
            ],
            False,
        ),
    ]
    kind = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter(name, kind, annotation=ann, default=default) for name, ann, default in own]
    params += [setting_parameter(s) for s in settings.settings_for(settings.TRACK)]
    return [params[0], *sorted(params[1:], key=lambda p: _panel_order(p.annotation))]


def track_command(**kwargs) -> None:
    """Evaluate a series of checkpoints, one model at a time: metric and effective length vs training step."""
    from evalkit.run.track import parse_set, run_track

    checkpoints, tasks = kwargs.pop("checkpoints"), kwargs.pop("task")
    lengths, trials, set_option = kwargs.pop("lengths"), kwargs.pop("trials"), kwargs.pop("set_option")
    options = {
        **({"lengths": lengths} if lengths else {}),
        **({"trials": trials} if trials is not None else {}),
        **parse_set(set_option),
    }
    outcome = run_track(
        checkpoints, tasks=tasks, options=options, console=make_console(stderr=True), log=typer.echo, **kwargs
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


track_command.__signature__ = inspect.Signature(_track_parameters())


def register(app: typer.Typer) -> None:
    app.add_typer(run_app, name="run")
    app.command("tasks")(tasks_command)
    app.command("backends")(backends_command)
    app.command("sweep")(user_errors(sweep_command))
    app.command("export")(user_errors(export_command))
    app.command("track")(user_errors(track_command))
