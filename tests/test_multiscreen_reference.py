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
