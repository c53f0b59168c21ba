"""``evalkit sweep --config study.toml``: models x attention variants x tasks x seeds in one command.

Each (model, task[, seed]) gets one run folder holding every attention variant, so a figure or
a comparison reads one folder. A model is loaded once for all its variants and tasks.

    out = "results/study"                  # folders: out/<model name>/<task>[-seed<N>]/
    seeds = [1234]                          # optional; default [1234]
    device = "auto"                         # optional: any run setting a sweep takes (evalkit.core.settings:
    dtype = "auto"                          #   backend, device_map, batch_tokens, rope_theta, ...)
    [[model]]
    path = "smollm2-135m"                   # anything --model takes
    name = "smollm2"                        # optional folder name
    [[attention]]
    name = "softmax"
    [[attention]]
    name = "ssmax"                          # s, b, train_length, n_mode, params_file, label
    s = 0.43
    [[task]]
    name = "perplexity"                     # any installed task, with its own options
    lengths = "512,1k"
    samples = 2
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from evalkit.core import settings as schema
from evalkit.core.errors import ConfigError

# A study's own keys, then every run setting a sweep accepts (evalkit.core.settings): device, dtype, ...
_STUDY_KEYS = ("out", "seeds", "model", "attention", "task")
_TOP_KEYS = {*_STUDY_KEYS, *schema.names(schema.SWEEP)}


@dataclass(frozen=True)
class Cell:
    model: dict
    task: dict
    seed: int
    folder: Path


@dataclass(frozen=True)
class Study:
    settings: dict[str, Any]
    attention: tuple[dict, ...]
    cells: tuple[Cell, ...]


def load_study(path: str | Path) -> Study:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"sweep config {path} not found", "give a TOML file (see evalkit sweep --help)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sweep config {path} is not valid TOML ({exc})", "fix the file") from None
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) in {path}: {', '.join(unknown)}", f"allowed: {', '.join(sorted(_TOP_KEYS))}")
    models, tasks = data.get("model", []), data.get("task", [])
    if not models or not tasks:
        raise ConfigError(
            f"{path} needs at least one [[model]] and one [[task]]", "see evalkit sweep --help for the format"
        )
    for entry in models:
        if "path" not in entry or set(entry) - {"path", "name"}:
            raise ConfigError(f"bad [[model]] entry {entry} in {path}", "give path and optionally name")
    for entry in tasks:
        if "name" not in entry:
            raise ConfigError(f"a [[task]] in {path} has no name", 'add name = "perplexity" (or needle, focus)')
    from evalkit.core.registry import get_task
    from evalkit.run.evaluate import build_options, model_slug

    for entry in tasks:  # a typo in any task's options fails now, not after the first cells ran
        build_options(get_task(entry["name"]), {k: v for k, v in entry.items() if k != "name"})
    attention = tuple(data.get("attention", [{"name": "auto"}]))
    if any("name" not in a for a in attention):
        raise ConfigError(f"an [[attention]] in {path} has no name", 'add name = "softmax" (or ssmax, logn, ...)')
    seeds = data.get("seeds", [1234])
    out = Path(data.get("out", "results/sweep"))
    cells = []
    for model in models:
        model_name = model.get("name") or model_slug(model["path"])
        for task in tasks:
            for seed in seeds:
                suffix = f"-seed{seed}" if len(seeds) > 1 else ""
                cells.append(Cell(model, task, int(seed), out / model_name / f"{task['name']}{suffix}"))
    given = {k: v for k, v in data.items() if k not in _STUDY_KEYS}
    return Study(schema.check_settings(given, schema.SWEEP), attention, tuple(cells))


def run_configs(study: Study, resume: bool, quiet: bool):
    from evalkit.run.evaluate import RunConfig

    s = study.settings
    for cell in study.cells:
        options = {k: v for k, v in cell.task.items() if k != "name"}
        yield (
            cell,
            RunConfig(
                task=cell.task["name"],
                model=cell.model["path"],
                task_options=options,
                attention=study.attention,
                rope=schema.rope_of(s),
                out=str(cell.folder),
                resume=resume,
                seed=cell.seed,
                quiet=quiet,
                **{f.name: s[f.name] for f in schema.config_fields() if schema.SWEEP in f.where},
            ),
        )


def check_study(study: Study, resume: bool) -> None:
    """Every cell's grid, files and folder, before any model loads or any folder is written."""
    from evalkit.run.evaluate import check_checkpoint, check_config

    for _cell, config in run_configs(study, resume, quiet=True):
        check_config(config)
        check_checkpoint(config)


def run_study(study: Study, resume: bool, quiet: bool, console=None, log=print) -> list:
    """Run every cell; each model is loaded once and reused for all its tasks and variants."""
    from evalkit.run.evaluate import execute, load_for

    check_study(study, resume)
    outcomes, backend, loaded_key = [], None, None
    for cell, config in run_configs(study, resume, quiet):
        key = (config.model, config.device, config.dtype, tuple(sorted(config.rope.items())))
        if key != loaded_key:
            backend, loaded_key = None, key  # free the previous model before loading the next
            backend = load_for(config, log)
        log(f"[{len(outcomes) + 1}/{len(study.cells)}] {cell.task['name']} on {cell.model['path']} -> {cell.folder}")
        outcome = execute(config, console=console, backend=backend)
        outcomes.append(outcome)
        if outcome.interrupted:
            break
    return outcomes
