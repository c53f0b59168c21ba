"""``evalkit.evaluate`` on a model object: the CLI's rows exactly, and the model handed back as found."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import cli
import evalkit
from evalkit.core.errors import ConfigError

APP = cli.register_tasks()
GRID = {"lengths": "128,192", "depths": "0,100", "trials": 2}


def _rows(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.drop(columns="run_id")
    keys = [c for c in frame.columns if c != "value"]
    return frame.sort_values(keys, key=lambda s: s.astype(str)).reset_index(drop=True)


def test_in_memory_equals_cli_and_model_is_left_as_found(tiny_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = CliRunner().invoke(
        APP,
        [
            "run",
            "needle",
            "--model",
            str(tiny_checkpoint),
            "--attention",
            "softmax,ssmax",
            "--ssmax-s",
            "0.5",
            "--lengths",
            GRID["lengths"],
            "--depths",
            GRID["depths"],
            "--trials",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "cli"),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    cli_rows = pd.read_parquet(tmp_path / "cli" / "results.parquet")

    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)  # the object a training loop holds
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model.train()
    model.model.layers[1].eval()  # mixed training flags come back module by module
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {name: m.training for name, m in model.named_modules()}
    rng = torch.random.get_rng_state()

    run = evalkit.evaluate(
        model,
        tokenizer,
        task="needle",
        attention=["softmax", "ssmax"],
        ssmax_s=0.5,
        name=tiny_checkpoint.resolve().name,
        progress=False,
        plots=False,
        **GRID,
    )
    pd.testing.assert_frame_equal(_rows(run.rows), _rows(cli_rows))  # row for row, values exactly
    assert len(run.rows) == len(cli_rows) > 0
    cli_summary = pd.read_csv(tmp_path / "cli" / "summary.csv")
    assert run.summary.accuracy.tolist() == cli_summary.accuracy.tolist()
    assert {"accuracy_ci_low", "accuracy_ci_high", "n", "units"} <= set(run.summary.columns)
    assert run.manifest["model"]["kind"] == "memory" and run.manifest["model"]["content_hash"].startswith(
        "memory:sha256:"
    )

    assert model.config._attn_implementation == "sdpa" and not hasattr(model.config, "evalkit_attention")
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert not hasattr(model.model.layers[0].self_attn, "ssmax_s")

    saved = run.save(tmp_path / "saved")
    back = evalkit.load_run(tmp_path / "saved")
    pd.testing.assert_frame_equal(back.rows, run.rows)
    assert back.summary.accuracy.tolist() == cli_summary.accuracy.tolist()
    assert saved.manifest["run_id"] == run.manifest["run_id"]


def test_learnable_ssmax_parameters_stay_the_optimizers(tokenizer):
    """A model training SSMax: evaluating it under other variants must not swap the Parameter objects
    the optimizer holds (apply_attention re-registers tensors), nor their values."""
    from evalkit.attention import apply_attention
    from tests.conftest import make_llama

    model = make_llama(len(tokenizer), seed=3)
    apply_attention(model, "ssmax", s=0.5, learnable=True)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    held = [p for group in optimizer.param_groups for p in group["params"]]
    s_before = model.model.layers[0].self_attn.ssmax_s.detach().clone()

    run = evalkit.evaluate(
        model,
        tokenizer,
        task="needle",
        attention="auto,softmax,logn",
        progress=False,
        plots=False,
        lengths="128",
        depths="50",
        trials=1,
    )
    assert set(run.rows.attention) == {"ssmax", "softmax", "logn"}
    now = list(model.parameters())
    assert len(now) == len(held) and all(a is b for a, b in zip(now, held))
    assert isinstance(model.model.layers[0].self_attn.ssmax_s, torch.nn.Parameter)
    assert torch.equal(model.model.layers[0].self_attn.ssmax_s.detach(), s_before)
    assert model.config._attn_implementation == "evalkit" and model.config.evalkit_attention["learnable"] is True
    assert model.training


def test_unknown_keyword_names_the_known_options(tokenizer):
    from tests.conftest import make_llama

    with pytest.raises(ConfigError) as caught:
        evalkit.evaluate(make_llama(len(tokenizer)), tokenizer, task="needle", trails=3)
    text = str(caught.value)
    assert "trails" in text and "did you mean 'trials'" in text and "lengths" in text and "ssmax_s" in text
    with pytest.raises(ConfigError, match="tokenizer"):
        evalkit.evaluate(make_llama(len(tokenizer)), task="needle")


def test_import_evalkit_does_not_import_torch():
    code = (
        "import sys, evalkit, evalkit.integrations; "
        "assert callable(evalkit.integrations.headline_metrics); "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
