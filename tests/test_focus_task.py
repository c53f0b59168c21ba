"""``evalkit run focus`` end to end: probe rows on a tiny checkpoint, and the analytic mode."""

from __future__ import annotations

import numpy as np
import pandas as pd
from typer.testing import CliRunner

import cli

runner = CliRunner()
APP = cli.register_tasks()


def run_focus(out, *extra):
    return runner.invoke(APP, ["run", "focus", "--out", str(out), "--device", "cpu", "--quiet", *map(str, extra)])


def test_focus_rows_per_layer_and_head(tiny_checkpoint, tmp_path):
    out = tmp_path / "focus"
    result = run_focus(
        out,
        "--model",
        tiny_checkpoint,
        "--lengths",
        "192,256",
        "--depths",
        "50",
        "--trials",
        "1",
        "--attention",
        "softmax,ssmax",
        "--ssmax-s",
        "0.8",
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "results.parquet")
    assert list(frame.columns[:10]) == [
        "run_id",
        "task",
        "model",
        "attention",
        "context_length",
        "depth",
        "trial",
        "layer",
        "head",
        "metric",
    ]
    assert set(frame.metric) == {
        "needle_mass",
        "max_weight",
        "entropy",
        "entropy_norm",
        "needle_rank",
        "top1_in_needle",
    }
    assert set(frame.layer) == {0, 1} and set(frame["head"]) == {0, 1, 2, 3}
    assert len(frame) == 2 * 2 * 2 * 4 * 6  # variants x lengths x layers x heads x metrics
    mass = frame[frame.metric == "needle_mass"].value
    assert ((mass >= 0) & (mass <= 1)).all()
    assert (frame[frame.metric == "needle_rank"].value >= 1).all()
    summary = pd.read_csv(out / "summary.csv")
    assert {"needle_mass", "entropy_norm", "top_heads"} <= set(summary.columns)
    for name in ["needle_mass_vs_length.png", "needle_mass_layer_head.png", "entropy_norm_vs_length.png"]:
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_focus_layers_and_answer_rows(tiny_checkpoint, tmp_path):
    out = tmp_path / "focus"
    result = run_focus(
        out,
        "--model",
        tiny_checkpoint,
        "--lengths",
        "192",
        "--depths",
        "0,100",
        "--trials",
        "1",
        "--layers",
        "1",
        "--query",
        "answer",
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "results.parquet")
    assert set(frame.layer) == {1} and sorted(frame.depth.unique()) == [0, 100]
    assert run_focus(tmp_path / "bad", "--model", tiny_checkpoint, "--layers", "one").exit_code == 2


def test_analytic_mode_needs_no_model(tmp_path):
    out = tmp_path / "analytic"
    result = run_focus(
        out, "--analytic", "--n", "16..4k", "--gap", "1", "--ssmax-s", "1.5", "--model", tmp_path / "nothing-here"
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "results.parquet")
    soft = frame[frame.attention == "softmax"].sort_values("context_length")
    n = soft.context_length.to_numpy()
    np.testing.assert_allclose(soft.value, np.e / (np.e + n - 1))
    ssmax = frame[frame.attention == "ssmax"].sort_values("context_length").value.to_numpy()
    assert ssmax.min() > 0.5 and soft.value.iloc[-1] < 0.001  # s * gap > 1: SSMax keeps its focus
    assert (out / "plots" / "analytic_max_weight.png").stat().st_size > 10_000
