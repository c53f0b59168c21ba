"""What a reference study is and where it lies on disk: its settings, folder layout, and the readers
of its trained pairs and runs. Shared by ``study`` (which fills the folder) and ``study_report``
(which reads it), so neither imports the other.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.core.errors import ConfigError, ResultsError
from evalkit.reference.positions import POSITIONS
from evalkit.reference.train import LEARNED_ACCURACY, VARIANTS, get_recipe

TASKS = ("needle", "focus", "perplexity")
ARCHES = (*VARIANTS, "multiscreen")  # the pair's two variants, and the screening arm (reference/screening.py)
FACTORS = (1, 2, 4, 8, 16)  # evaluation lengths, as multiples of the training length
RUN_SEED = 1234  # the prompts' seed: one for every model, so pairs compare prompt by prompt
UNITS = {"needle": ["train_seed", "trial"], "focus": ["train_seed", "trial"], "perplexity": ["train_seed", "sample"]}


@dataclass(frozen=True)
class StudySettings:
    """Everything that decides the study's numbers; stored in ``study.json``."""

    positions: tuple[str, ...] = ("rope", "irope")
    seeds: tuple[int, ...] = (0, 1, 2)
    recipe: str = "cpu"
    steps: int | None = None  # overrides every recipe's steps (tests, quick looks)
    needle_trials: int = 20
    focus_trials: int = 4
    perplexity_samples: int = 8
    depths: str = "0:100:25"
    factors: tuple[int, ...] = FACTORS
    arches: tuple[str, ...] = VARIANTS  # add "multiscreen" for the screening arm

    def check(self) -> None:
        bad = [p for p in self.positions if p not in POSITIONS]
        if bad or not self.positions:
            raise ConfigError(
                f"bad --positions {','.join(self.positions)}", f"give some of {', '.join(POSITIONS)}, e.g. rope,irope"
            )
        if not self.seeds or any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"bad --seeds {self.seeds}", "give distinct seeds >= 0, e.g. 0,1,2")
        bad = [a for a in self.arches if a not in ARCHES]
        if bad or not self.arches or ("softmax" in self.arches) != ("ssmax" in self.arches):
            raise ConfigError(
                f"bad --arch {','.join(self.arches)}",
                f"give some of {', '.join(ARCHES)}; softmax and ssmax train together as a pair (both or neither)",
            )
        if not self.factors or any(f < 1 for f in self.factors):
            raise ConfigError(f"bad --factors {self.factors}", "give multiples of the training length >= 1, e.g. 1,2,4")
        for name in ("needle_trials", "focus_trials", "perplexity_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"bad {name} {getattr(self, name)}", "give at least 1")
        for p in self.positions:
            get_recipe(self.recipe, p)  # unknown recipe: the recipe's own error

    def recipe_for(self, positions: str):
        recipe = get_recipe(self.recipe, positions)
        return recipe.replace(steps=self.steps) if self.steps is not None else recipe

    def lengths(self, positions: str) -> list[int]:
        return [self.recipe_for(positions).train_length * f for f in self.factors]


def pair_folder(out: Path, positions: str, seed: int) -> Path:
    return Path(out) / "models" / positions / f"seed{seed}"


def run_folder(out: Path, positions: str, seed: int, variant: str, task: str) -> Path:
    return Path(out) / "runs" / f"{positions}-seed{seed}-{variant}" / task


def load_frames(out: Path, settings: StudySettings) -> dict[str, Any]:
    """Per task, every run's rows with positions, train_seed and variant columns added."""
    import pandas as pd

    frames: dict[str, list] = {t: [] for t in TASKS}
    for positions in settings.positions:
        for seed in settings.seeds:
            for variant in settings.arches:
                for task in TASKS:
                    path = run_folder(out, positions, seed, variant, task) / "results.parquet"
                    if not path.is_file():
                        raise ResultsError(
                            f"{path} is missing", "run the study again (with --resume if it was interrupted)"
                        )
                    frame = pd.read_parquet(path)
                    frame["positions"], frame["train_seed"], frame["variant"] = positions, seed, variant
                    frames[task].append(frame)
    return {t: pd.concat(f, ignore_index=True) for t, f in frames.items()}


def pair_summaries(out: Path, settings: StudySettings) -> dict[tuple[str, int], dict]:
    """Per (positions, seed): the pair's summary.json (when the pair is in the study) with the
    Multiscreen arm's summary under "multiscreen" (when it is)."""
    summaries = {}
    for p in settings.positions:
        for s in settings.seeds:
            folder = pair_folder(out, p, s)
            summary = json.loads((folder / "summary.json").read_text()) if "softmax" in settings.arches else {}
            if "multiscreen" in settings.arches:
                summary["multiscreen"] = json.loads((folder / "multiscreen_summary.json").read_text())
            summaries[(p, s)] = summary
    return summaries


def learned(summary: dict) -> bool:
    arms = list(summary.get("variants", {}).values()) + ([summary["multiscreen"]] if "multiscreen" in summary else [])
    return all(v["heldout_recall_accuracy"] >= LEARNED_ACCURACY for v in arms)


def finite(x: float) -> bool:
    return x is not None and math.isfinite(x)
