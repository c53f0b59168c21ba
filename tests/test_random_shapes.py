"""``evalkit models random``: a random-weight checkpoint of a published shape loads like any other."""

from __future__ import annotations

from typer.testing import CliRunner

import cli
from evalkit.models.loading import LoadOptions, load_model
from evalkit.models.shapes import SHAPES

APP = cli.register_tasks()


def test_random_checkpoint_has_the_shape_and_loads(tiny_checkpoint, tmp_path):
    out = tmp_path / "random"
    result = CliRunner().invoke(
        APP,
        [
            "models",
            "random",
            "--shape",
            "smollm2-135m",
            "--layers",
            "1",
            "--tokenizer",
            str(tiny_checkpoint),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    loaded = load_model(str(out), LoadOptions(device="cpu"))
    config, want = loaded.model.config, SHAPES["smollm2-135m"]
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        assert getattr(config, key) == want[key], key
    assert config.num_hidden_layers == 1 and config.evalkit_random_shape == "smollm2-135m"
    weights = loaded.model.model.layers[0].mlp.up_proj.weight
    assert (
        abs(float(weights.detach().float().std()) - config.initializer_range) < 2e-3
    )  # random, not zeros or leftovers
    again = CliRunner().invoke(APP, ["models", "random", "--out", str(out), "--tokenizer", str(tiny_checkpoint)])
    assert again.exit_code == 2 and "not empty" in again.output


def test_unknown_shape_names_the_close_one(tiny_checkpoint, tmp_path):
    result = CliRunner().invoke(
        APP,
        ["models", "random", "--shape", "llama-1", "--tokenizer", str(tiny_checkpoint), "--out", str(tmp_path / "x")],
    )
    assert result.exit_code == 2 and "did you mean 'llama-1b'" in result.output
