"""``evalkit track``: evaluate a series of checkpoints and read them as one thing, metric vs step.

The questions a training run asks (at which step did retrieval at 4x the training length appear,
when did effective length stop improving, did SSMax get there earlier) need every checkpoint's
run side by side with its step. This module evaluates a list of checkpoint folders (the
Trainer's ``checkpoint-<N>/`` layout, ``evalkit reference train --save-every``'s, anything with
a ``trainer_state.json``) one model at a time, resumably, into one folder::

    OUT/track.json                        what was asked (a resume must ask the same), the checkpoints seen
    OUT/<series>/step-<N>/<task>/         one ordinary run folder per checkpoint and task; its
                                          manifest.json records "step", "series" and "checkpoint"
    OUT/track.parquet, track.csv          every run's rows with series and step columns
    OUT/track_summary.csv                 every run's summary (n, 95% intervals) with series and step
    OUT/figures/                          each metric vs step per length, effective length vs step

A *series* is the folder that holds the checkpoints (``ckpts/`` for ``ckpts/checkpoint-*``), so two
trainings tracked together stay two lines. The training callback (``evalkit.integrations``) writes
the same ``<series>/step-<N>/<task>`` layout, so ``evalkit plot OUT --x step`` reads either.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.core import settings as schema
from evalkit.core.errors import ConfigError, ResultsError

STATE = "track.json"
STEP_NAME = re.compile(r"(?:checkpoint|step|ckpt|iter)[-_]?(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    series: str


@dataclass(frozen=True)
class TrackSettings:
    """What every checkpoint is evaluated with: tasks and their options, variants, RoPE overrides, and
    the run settings a track accepts (``evalkit.core.settings``, checked; absent ones take their defaults)."""

    tasks: tuple[str, ...]
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> its options
    attention: tuple[dict[str, Any], ...] = ({"name": "auto"},)
    rope: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)  # setting name -> value: device, dtype, seed, quiet, ...

    def value(self, name: str) -> Any:
        return self.run[name] if name in self.run else schema.BY_NAME[name].default

    def config_values(self) -> dict[str, Any]:
        """The RunConfig fields a track sets (the others, such as out and resume, are per run)."""
        return {s.name: self.value(s.name) for s in schema.config_fields() if schema.TRACK in s.where}

    def identity(self) -> dict[str, Any]:
        """What a resume must match (the runs check their own identity too; this says it once, up front)."""
        rope = {k: v for k, v in self.rope.items() if v is not None}
        return {
            "tasks": list(self.tasks),
            "task_options": self.task_options,
            "attention": list(self.attention),
            "seed": self.value("seed"),
            "dtype": self.value("dtype"),
            "allow_extrapolation": self.value("allow_extrapolation"),
            **({"rope": rope} if rope else {}),
        }


@dataclass
class TrackOutcome:
    folder: Path
    evaluated: list[Path]
    skipped: list[Path]
    interrupted: bool
    rows: Any = None  # the combined table, with series and step
    summary: Any = None
    figures: list[Path] = field(default_factory=list)


def step_of(folder: Path) -> int | None:
    """The training step of a checkpoint folder: trainer_state.json's global_step, else its name (checkpoint-500)."""
    state = folder / "trainer_state.json"
    if state.is_file():
        try:
            step = json.loads(state.read_text()).get("global_step")
        except ValueError:
            raise ConfigError(
                f"{state} is not valid JSON", "fix or remove it (the step is then read from the folder name)"
            ) from None
        if isinstance(step, int) and not isinstance(step, bool):
            return step
    match = STEP_NAME.search(folder.name)
    return int(match.group(1)) if match else None


def find_checkpoints(specs: list[str]) -> list[Checkpoint]:
    """The checkpoint folders that ``specs`` name (paths or globs; a shell has usually expanded
    them already), with their steps and series, sorted by series then step."""
    from evalkit.run.evaluate import model_folders

    paths: list[Path] = []
    for spec in specs:
        matches = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
        if not matches:
            raise ConfigError(f"no checkpoint matches {spec}", "check the glob, e.g. ckpts/checkpoint-*")
        paths += [Path(m) for m in matches]
    paths = [p for p in dict.fromkeys(p.resolve() for p in paths)]
    folders = [p for p in paths if p.is_dir()]
    if not folders:
        raise ConfigError(
            f"no checkpoint folder among {', '.join(specs)}", "give checkpoint folders (config.json + weights)"
        )
    steps = {}
    for folder in folders:
        step = step_of(folder)
        if step is None:
            raise ConfigError(
                f"cannot tell the training step of {folder}",
                "name it checkpoint-<step> or give it a trainer_state.json with global_step",
            )
        steps[folder] = step
    parents = sorted({str(f.parent) for f in folders})
    series = dict(zip(parents, model_folders(parents)))
    out = [Checkpoint(f, steps[f], series[str(f.parent)]) for f in folders]
    seen: dict[tuple[str, int], Path] = {}
    for c in out:
        if (c.series, c.step) in seen:
            raise ConfigError(
                f"{seen[(c.series, c.step)]} and {c.path} are both step {c.step} of series {c.series}",
                "give each step of a series once",
            )
        seen[(c.series, c.step)] = c.path
    return sorted(out, key=lambda c: (c.series, c.step))


def run_folder(out: Path, series: str, step: int, task: str) -> Path:
    return Path(out) / series / f"step-{step}" / task


def tag_run(folder: Path, step: int, series: str, checkpoint: str | None = None) -> None:
    """Record the step (and series, checkpoint) in a finished run's manifest: what step figures and
    compare's ``step=`` selector read."""
    from evalkit.store.results import atomic_write_text, read_manifest

    manifest = read_manifest(folder)
    manifest.update({"step": int(step), "series": series, **({"checkpoint": checkpoint} if checkpoint else {})})
    atomic_write_text(Path(folder) / "manifest.json", json.dumps(manifest, indent=2, default=str) + "\n")


def is_finished(folder: Path) -> bool:
    """Whether a run folder holds a complete, tagged run (a resume skips it): the one completeness
    rule (``store.run_folder.completeness``, as compare and gate judge), and a recorded step."""
    from evalkit.store.results import read_manifest
    from evalkit.store.run_folder import completeness

    manifest = read_manifest(folder) if Path(folder).is_dir() else {}
    return "step" in manifest and completeness(manifest, folder).complete


def run_configs(checkpoint: Checkpoint, settings: TrackSettings, out: Path) -> list:
    from evalkit.run.evaluate import RunConfig

    configs = []
    for task in settings.tasks:
        folder = run_folder(out, checkpoint.series, checkpoint.step, task)
        configs.append(
            RunConfig(
                task=task,
                model=str(checkpoint.path),
                task_options=settings.task_options.get(task, {}),
                attention=settings.attention,
                rope=settings.rope,
                out=str(folder),
                resume=folder.exists(),
                **settings.config_values(),
            )
        )
    return configs


def check_track(out: Path, checkpoints: list[Checkpoint], settings: TrackSettings, resume: bool) -> None:
    """Everything checkable before a model loads: the folder, a resume's settings, every run config."""
    from evalkit.run.evaluate import check_checkpoint, check_config
    from evalkit.store.results import _differences

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ResultsError(f"--out {out} is a file", "give a folder")
    state = out / STATE
    if state.is_file():
        if not resume:
            raise ResultsError(
                f"--out {out} already holds a track",
                "pass --resume to continue it (new checkpoints are added), or choose another --out",
            )
        stored = json.loads(state.read_text()).get("settings", {})
        differing = _differences(stored, json.loads(json.dumps(settings.identity(), default=str)))
        if differing:
            raise ResultsError(
                f"--out {out} holds a track with other settings ({'; '.join(differing)})",
                "resume with the settings it was started with (see its track.json), or choose another --out",
            )
    elif out.exists() and any(out.iterdir()):
        raise ResultsError(f"--out {out} is not empty and holds no track", "choose a new or empty folder")
    for checkpoint in checkpoints:
        for config in run_configs(checkpoint, settings, out):
            config = dataclasses.replace(config, resume=True)  # a folder left by an interrupt is resumed
            check_config(config)
            check_checkpoint(config)


def track(
    specs: list[str],
    settings: TrackSettings,
    out: str | Path,
    resume: bool = False,
    console=None,
    log: Callable[[str], Any] = print,
    figures: bool = True,
) -> TrackOutcome:
    """Evaluate every checkpoint that ``specs`` name on every task, one model loaded at a time;
    finished runs are skipped on ``resume``. Then write the combined tables and the step figures."""
    from evalkit.run.evaluate import execute, load_for
    from evalkit.store.results import atomic_write_text

    out = Path(out)
    checkpoints = find_checkpoints(specs)
    check_track(out, checkpoints, settings, resume)
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / STATE).read_text()).get("checkpoints", {}) if (out / STATE).is_file() else {}
    seen = {**previous, **{f"{c.series}/step-{c.step}": str(c.path) for c in checkpoints}}
    atomic_write_text(
        out / STATE, json.dumps({"settings": settings.identity(), "checkpoints": seen}, indent=2, default=str) + "\n"
    )

    evaluated, skipped = [], []
    for k, checkpoint in enumerate(checkpoints):
        todo = [c for c in run_configs(checkpoint, settings, out) if not is_finished(Path(c.out))]
        skipped += [
            run_folder(out, checkpoint.series, checkpoint.step, t)
            for t in settings.tasks
            if not any(Path(c.out) == run_folder(out, checkpoint.series, checkpoint.step, t) for c in todo)
        ]
        if not todo:
            log(f"[{k + 1}/{len(checkpoints)}] {checkpoint.series} step {checkpoint.step}: done before, skipped")
            continue
        log(f"[{k + 1}/{len(checkpoints)}] {checkpoint.series} step {checkpoint.step}: {checkpoint.path}")
        quiet = settings.value("quiet")
        backend = load_for(todo[0], log=(lambda *a: None) if quiet else log)  # one model in memory at a time
        try:
            for config in todo:
                outcome = execute(config, console=console, backend=backend)
                if outcome.interrupted:
                    return TrackOutcome(out, evaluated, skipped, True)
                tag_run(outcome.folder, checkpoint.step, checkpoint.series, str(checkpoint.path))
                evaluated.append(outcome.folder)
        finally:
            del backend
    rows, summary = write_tables(out)
    drawn = []
    if figures:
        from evalkit.report.steps import plot_steps

        drawn = plot_steps([str(out)], str(out / "figures"))
    return TrackOutcome(out, evaluated, skipped, False, rows, summary, drawn)


def write_tables(out: Path):
    """track.parquet / track.csv (every row, with series and step) and track_summary.csv, from the run folders."""
    import pandas as pd

    from evalkit.report.steps import tagged_runs
    from evalkit.store.results import atomic_write
    from evalkit.store.run_folder import load_run

    rows, summaries = [], []
    for folder in tagged_runs(out):
        run = load_run(folder)
        extra = {"series": run.manifest.get("series"), "step": int(run.manifest["step"])}
        frame = run.rows.copy()
        at = list(frame.columns).index("model") + 1
        for offset, (column, value) in enumerate(extra.items()):
            frame.insert(at + offset, column, value)
        rows.append(frame)
        if run.summary is not None and len(run.summary):
            summaries.append(
                run.summary.assign(**extra, task=run.task)[["task", "series", "step", *run.summary.columns]]
            )
    frame = pd.concat(rows, ignore_index=True)
    summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame()
    atomic_write(out / "track.parquet", lambda tmp: frame.to_parquet(tmp, index=False))
    atomic_write(out / "track.csv", lambda tmp: frame.to_csv(tmp, index=False))
    atomic_write(out / "track_summary.csv", lambda tmp: summary.to_csv(tmp, index=False))
    return frame, summary


def coerce_options(tasks: tuple[str, ...], given: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Shared options (``--lengths 1k..16k``, ``--set trials=5``) as each task's own: an option goes to
    every task that has it, typed by that task's field; one that no task has is an error."""
    import typing

    from evalkit.core.registry import get_task

    per_task: dict[str, dict[str, Any]] = {t: {} for t in tasks}
    for key, value in given.items():
        takers = []
        for task in tasks:
            task_cls = get_task(task)
            fields = {f.name: f for f in dataclasses.fields(task_cls.Options)}
            if key not in fields:
                continue
            takers.append(task)
            hint = typing.get_type_hints(task_cls.Options)[key]
            per_task[task][key] = _typed(key, value, hint)
        if not takers:
            known = sorted({f.name for t in tasks for f in dataclasses.fields(get_task(t).Options)})
            raise ConfigError(f"no task in {', '.join(tasks)} has the option {key!r}", f"known: {', '.join(known)}")
    return per_task


def _typed(key: str, value: Any, hint) -> Any:
    import typing

    if not isinstance(value, str):
        return value
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if value.lower() == "none" and type(None) in typing.get_args(hint):
        return None
    kind = kinds[0]
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return kind(value) if kind in (int, float) else value
    except ValueError:
        raise ConfigError(f"bad value {value!r} for {key}", f"give a {getattr(kind, '__name__', kind)}") from None


def parse_set(items: list[str] | None) -> dict[str, str]:
    """["trials=5", "depths=0,50,100"] -> {"trials": "5", "depths": "0,50,100"} (dashes read as underscores)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad --set {item!r}", "write OPTION=VALUE, e.g. --set trials=5")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def run_track(
    specs: list[str],
    *,
    tasks: list[str],
    options: dict[str, Any],
    out: str = "results/track",
    resume: bool = False,
    console=None,
    log: Callable[[str], Any] = print,
    **run_settings: Any,
) -> TrackOutcome:
    """``evalkit track`` end to end: the CLI's values as settings, then ``track``. ``run_settings``: any
    run setting a track accepts (``evalkit.core.settings``, where includes track), by name."""
    from evalkit.run.attention_flags import attention_flag_requests

    names = tuple(dict.fromkeys(t.strip() for task in tasks for t in task.split(",") if t.strip()))
    if not names:
        raise ConfigError("no --task given", "e.g. --task needle")
    values = schema.check_settings(run_settings, schema.TRACK)
    task_options = coerce_options(names, options)
    from evalkit.run.evaluate import check_task_options

    for task in names:  # a bad grid fails before torch is imported (the attention flags import it)
        check_task_options(task, task_options[task], values["seed"], values["allow_extrapolation"])
    flags = {n: values[n] for n in schema.names(schema.TRACK, "attention") if n != "attention"}
    track_settings = TrackSettings(
        tasks=names,
        task_options=task_options,
        attention=attention_flag_requests(values["attention"], **flags),
        rope=schema.rope_of(values),
        run={k: v for k, v in values.items() if schema.BY_NAME[k].goes_to == "config"},
    )
    return track(specs, track_settings, out, resume=resume, console=console, log=log)
