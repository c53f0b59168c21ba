"""The reference study in one command: train Softmax/SSMax pairs per position scheme and seed,
evaluate each model with needle, focus and perplexity, and write ``report.md``.

``run_study(out, positions=("rope", "irope"), seeds=(0, 1, 2), recipe="cpu")`` lays out::

    out/study.json                         the study's settings (a later call must agree with them)
    out/models/<positions>/seed<k>/        one reference pair (train_reference_pair's folder)
    out/runs/<positions>-seed<k>-<variant>/{needle,focus,perplexity}/   one results folder per model
    out/data/abcdigits.jsonl               the perplexity corpus: ABCDigits documents
    out/report.md, out/figures/*.png, out/tables/*.csv

What exists is reused: a pair whose ``summary.json`` is there is not trained again, a finished run
is not run again. An interrupted run is continued with ``resume=True`` (``--resume``); without
it the study stops and says so, as ``evalkit run`` does. Every model is evaluated on the same
prompts (one run seed), so softmax and SSMax of a pair compare prompt by prompt.

Statistics come from ``evalkit.report.stats``: the independent unit is (training seed, needle
trial) for needle and focus and (training seed, window) for perplexity, so the bands cover both
the spread over seeds and over prompts. The per-seed paired comparisons go through
``evalkit.report.compare.compare_runs``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.core.errors import ConfigError, ResultsError
from evalkit.reference.study_layout import RUN_SEED, TASKS, StudySettings, pair_folder, run_folder
from evalkit.reference.study_report import write_report
from evalkit.reference.train import train_reference_pair


def run_study(
    out: str | Path,
    settings: StudySettings = StudySettings(),
    *,
    device: str = "auto",
    resume: bool = False,
    log: Callable[[str], Any] = print,
    progress: bool = False,
) -> Path:
    """Train what is missing, evaluate what is missing, write the report; returns report.md's path."""
    settings.check()
    out = Path(out)
    _check_study_file(out, settings)
    for positions in settings.positions:
        for seed in settings.seeds:
            pair = _train_pair(out, settings, positions, seed, device, log, progress)
            for variant in settings.arches:
                for task in TASKS:
                    _evaluate(out, settings, positions, seed, variant, task, pair, device, resume, log)
    return write_report(out, settings, log=log)


def _check_study_file(out: Path, settings: StudySettings) -> None:
    path = out / "study.json"
    wanted = json.loads(json.dumps(asdict(settings)))
    if path.is_file():
        stored = json.loads(path.read_text())
        # more position schemes, seeds or arms may join a study; what they are measured with may not change
        stored.setdefault("arches", ["softmax", "ssmax"])  # a study from before the screening arm
        fixed = {k: v for k, v in wanted.items() if k not in ("positions", "seeds", "arches")}
        changed = sorted(k for k, v in fixed.items() if stored.get(k) != v)
        if changed:
            raise ConfigError(
                f"{out} holds a study with other settings "
                f"({', '.join(f'{k} {stored.get(k)} -> {wanted[k]}' for k in changed)})",
                "use the stored settings, or another --out",
            )
        wanted["positions"] = list(dict.fromkeys(stored["positions"] + wanted["positions"]))
        wanted["seeds"] = list(dict.fromkeys(stored["seeds"] + wanted["seeds"]))
        wanted["arches"] = list(dict.fromkeys(stored["arches"] + wanted["arches"]))
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted, indent=2) + "\n")


def _train_pair(
    out: Path, settings: StudySettings, positions: str, seed: int, device: str, log, progress: bool
) -> Path:
    folder = pair_folder(out, positions, seed)
    recipe = settings.recipe_for(positions)
    if "multiscreen" in settings.arches and not (folder / "multiscreen_summary.json").is_file():
        from evalkit.reference.screening import train_multiscreen

        log(f"training the multiscreen arm, {positions} recipe, seed {seed} -> {folder / 'multiscreen'}")
        train_multiscreen(folder, recipe=recipe, seed=seed, device=device, log=log)
    if "softmax" not in settings.arches:
        return folder
    summary_file = folder / "summary.json"
    if summary_file.is_file():
        stored = json.loads(summary_file.read_text())
        if _with_defaults(stored.get("recipe_fields") or {}) != json.loads(json.dumps(asdict(recipe))):
            raise ConfigError(
                f"{folder} holds a pair trained with another recipe than {recipe.name} ({recipe.describe()})",
                "move it away, or run the study with the recipe it was trained with",
            )
        log(f"reusing {folder} (trained)")
        return folder
    log(f"training {positions} pair, seed {seed} -> {folder}")
    train_reference_pair(folder, recipe=recipe, seed=seed, device=device, progress=progress, log=log)
    return folder


def _with_defaults(recorded: dict) -> dict:
    """A summary's recipe fields with the fields added since filled in with their defaults (a pair
    trained before ``positions`` existed is a RoPE pair)."""
    from dataclasses import MISSING, fields

    from evalkit.reference.train import Recipe

    defaults = {f.name: f.default for f in fields(Recipe) if f.default is not MISSING}
    return json.loads(json.dumps({**defaults, **recorded}))


def perplexity_corpus(out: Path, settings: StudySettings) -> Path:
    """ABCDigits documents as long as the longest evaluation length (one per line, JSONL): the
    text the models were trained on, so the loss by position shows what unseen lengths do to it."""
    from evalkit.reference.data import abc_sequence
    from evalkit.reference.tokenizer import CHARS

    path = Path(out) / "data" / "abcdigits.jsonl"
    if path.is_file():
        return path
    recipe = settings.recipe_for(settings.positions[0])
    longest = max(settings.lengths(settings.positions[0]))
    rng = np.random.default_rng([RUN_SEED, 7])
    id_to_char = {i + 2: ch for i, ch in enumerate(CHARS)}
    lines = []
    for _ in range(max(settings.perplexity_samples, 8)):
        tokens = abc_sequence(rng, longest, recipe.digits)[0]
        lines.append(json.dumps({"text": "".join(id_to_char[int(t)] for t in tokens)}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def task_options(out: Path, settings: StudySettings, positions: str, task: str) -> dict[str, Any]:
    recipe = settings.recipe_for(positions)
    lengths = ",".join(str(n) for n in settings.lengths(positions))
    if task == "perplexity":
        return {
            "lengths": lengths,
            "samples": settings.perplexity_samples,
            "dataset": str(perplexity_corpus(out, settings)),
        }
    trials = settings.needle_trials if task == "needle" else settings.focus_trials
    return {
        "needle": "abcdigits",
        "chat": "off",
        "digits": recipe.digits,
        "lengths": lengths,
        "depths": settings.depths,
        "trials": trials,
    }


def _evaluate(
    out: Path,
    settings: StudySettings,
    positions: str,
    seed: int,
    variant: str,
    task: str,
    pair: Path,
    device: str,
    resume: bool,
    log,
) -> Path:
    from evalkit.run.evaluate import RunConfig, execute
    from evalkit.store.run_folder import load_run

    folder = run_folder(out, positions, seed, variant, task)
    if (folder / "manifest.json").is_file() and load_run(folder).complete:
        return folder
    if folder.exists() and not resume:
        raise ResultsError(
            f"the {task} run of {positions} seed {seed} {variant} in {folder} did not finish",
            "continue the study with --resume",
        )
    log(f"{task}: {positions} seed {seed} {variant}")
    config = RunConfig(
        task=task,
        model=str(pair / variant),
        task_options=task_options(out, settings, positions, task),
        out=str(folder),
        resume=folder.exists(),
        device=device,
        seed=RUN_SEED,
        allow_extrapolation=True,
        quiet=True,
        plots=False,
    )  # the report draws the study's figures
    outcome = execute(config)
    if outcome.interrupted:
        raise ResultsError(f"the {task} run in {folder} was interrupted", "continue the study with --resume")
    return folder
