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

    def check(self) -> None:
        bad = [p for p in self.positions if p not in POSITIONS]
        if bad or not self.positions:
            raise ConfigError(
                f"bad --positions {','.join(self.positions)}", f"give some of {', '.join(POSITIONS)}, e.g. rope,irope"
            )
        if not self.seeds or any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"bad --seeds {self.seeds}", "give distinct seeds >= 0, e.g. 0,1,2")
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
            for variant in VARIANTS:
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
    return {
        (p, s): json.loads((pair_folder(out, p, s) / "summary.json").read_text())
        for p in settings.positions
        for s in settings.seeds
    }


def learned(summary: dict) -> bool:
    return all(v["heldout_recall_accuracy"] >= LEARNED_ACCURACY for v in summary["variants"].values())


def finite(x: float) -> bool:
    return x is not None and math.isfinite(x)
