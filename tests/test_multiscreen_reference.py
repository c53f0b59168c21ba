"""The reference study's Multiscreen arm: same batches as the pair, saved as a loadable checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evalkit.core.errors import ConfigError
from evalkit.models.multiscreen import load_checkpoint
from evalkit.reference import RECIPES
from evalkit.reference import screening as screening_module
from evalkit.reference.screening import ScreenRecipe, train_multiscreen
from evalkit.reference.study_layout import StudySettings
from evalkit.reference.study_report import comparisons

TINY = RECIPES["cpu-irope"].replace(name="tiny", batch=4, steps=3, warmup=1, eval_sequences=8)


def test_trains_on_the_pairs_batches_and_saves_a_checkpoint(tmp_path, monkeypatch):
    seen = []
    real = screening_module.abc_batch

    def recording(rng, batch, length, digits):
        out = real(rng, batch, length, digits)
        seen.append(out.tokens.copy())
        return out

    monkeypatch.setattr(screening_module, "abc_batch", recording)
    summary = train_multiscreen(tmp_path, recipe=TINY, screen=ScreenRecipe(warmup=1), seed=5, device="cpu", log=print)
    # the pair's stream: default_rng([seed, 0]), one abc_batch per step with the recipe's shape
    rng = np.random.default_rng([5, 0])
    for tokens in seen:
        np.testing.assert_array_equal(tokens, real(rng, 4, 32, 2).tokens)
    assert len(seen) == 3 and summary["steps"] == 3
    record = json.loads((tmp_path / "multiscreen" / "config.json").read_text())
    assert record["training_length"] == 32 and record["mipe_threshold"] == 16.0
    model = load_checkpoint(tmp_path / "multiscreen", "cpu")
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    assert model.tokenizer.decode(model.tokenizer("A=12\n")["input_ids"]) == "A=12\n"
    assert model(torch.tensor([[5, 6, 7]])).shape == (1, 3, 98)


def test_arches_and_their_comparisons():
    assert comparisons(("softmax", "ssmax", "multiscreen")) == [
        ("softmax", "ssmax"),
        ("softmax", "multiscreen"),
        ("ssmax", "multiscreen"),
    ]
    StudySettings(arches=("multiscreen",)).check()
    with pytest.raises(ConfigError, match="both or neither"):
        StudySettings(arches=("softmax", "multiscreen")).check()
    with pytest.raises(ConfigError, match="arch"):
        StudySettings(arches=("mamba",)).check()


def test_three_arm_study_end_to_end(tmp_path, monkeypatch):
    """softmax, SSMax and Multiscreen trained on the same batches, evaluated on the same prompts
    through their backends, compared pairwise in one report."""
    import pandas as pd

    from evalkit.reference import train as train_module
    from evalkit.reference.study import run_study
    from evalkit.reference.study_layout import run_folder

    tiny = RECIPES["cpu"].replace(
        name="tiny", layers=2, width=16, heads=2, mlp_ratio=2, train_length=16, batch=4, steps=2, warmup=1,
        eval_sequences=8, digits=2, threads=1,
    )  # fmt: skip
    monkeypatch.setitem(train_module.RECIPES, "tiny", tiny)
    settings = StudySettings(
        positions=("irope",), seeds=(0,), recipe="tiny", needle_trials=1, focus_trials=1, perplexity_samples=2,
        depths="50", factors=(1, 2), arches=("softmax", "ssmax", "multiscreen"),
    )  # fmt: skip
    text = run_study(tmp_path, settings, device="cpu", log=lambda *_: None).read_text()
    for heading in ("## SSMax - softmax, paired", "## Multiscreen - softmax, paired", "## Multiscreen - SSMax, paired"):
        assert heading in text
    assert "| irope | 0 | multiscreen |" in text  # its training row, with its parameter count
    prompts = [
        pd.read_parquet(run_folder(tmp_path, "irope", 0, arm, "needle") / "results.parquet")[["answer", "needle_start"]]
        for arm in ("softmax", "multiscreen")
    ]
    assert prompts[0].reset_index(drop=True).equals(prompts[1].reset_index(drop=True))  # the same prompts
    focus = pd.read_parquet(run_folder(tmp_path, "irope", 0, "multiscreen", "focus") / "results.parquet")
    assert {"needle_mass", "accepted_keys", "needle_only"} <= set(focus.metric)
