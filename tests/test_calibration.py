"""Calibration sweeps: lists of parameter values become labelled variants, and the chosen value is
reported with the data it was chosen on (evaluation data: an oracle; --calibrate-on: other samples).

The scores are checked against numbers recomputed here from the rows (scipy's t interval over
samples); the run's rows for ``ssmax(s=0.5)`` are checked against a separate single-variant run
with ``--ssmax-s 0.5``, so a label carries the value it ran with.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from evalkit.core.errors import ConfigError
from evalkit.run.calibration import ORACLE, choose, expand, parse_values
from evalkit.run.evaluate import RunConfig, execute

PPL = {"lengths": "64,128", "samples": 3}


def test_lists_expand_to_one_labelled_variant_per_value():
    requests = expand(
        ["softmax", "ssmax", "ssmax-bias", "llama4-temp"],
        {"s": [0.3, 0.5], "b": [0.1], "floor_scale": [64.0, 128.0], "beta": None},
    )
    labels = [r.get("label", r["name"]) for r in requests]
    assert labels == [
        "softmax",
        "ssmax(s=0.3)",
        "ssmax(s=0.5)",
        "ssmax-bias(s=0.3)",
        "ssmax-bias(s=0.5)",
        "llama4-temp(floor_scale=64)",
        "llama4-temp(floor_scale=128)",
    ]
    assert requests[2] == {"name": "ssmax", "s": 0.5, "b": 0.1, "label": "ssmax(s=0.5)"}
    assert parse_values("--original-length", "512,1k", length=True) == [512, 1024]
    with pytest.raises(ConfigError, match="no variant"):
        expand(["softmax", "logn"], {"s": [0.3, 0.5]})
    with pytest.raises(ConfigError, match="bad --beta"):
        parse_values("--beta", "0.1,x")
    with pytest.raises(ConfigError, match="twice"):
        parse_values("--beta", "0.1,0.1")


def _run(checkpoint, out, attention, **kw):
    config = RunConfig(
        "perplexity",
        str(checkpoint),
        task_options=PPL,
        attention=attention,
        out=str(out),
        device="cpu",
        quiet=True,
        **kw,
    )
    return execute(config)


def test_oracle_sweep_is_marked_and_scores_match_the_rows(tiny_checkpoint, tmp_path):
    attention = expand(["softmax", "ssmax"], {"s": [0.2, 0.5, 1.0]})
    outcome = _run(tiny_checkpoint, tmp_path / "run", attention)
    frame = outcome.frame
    assert sorted(frame.attention.unique()) == ["softmax", "ssmax(s=0.2)", "ssmax(s=0.5)", "ssmax(s=1)"]

    # the label ran with its value: same rows as a run of that value alone
    single = _run(tiny_checkpoint, tmp_path / "single", ({"name": "ssmax", "s": 0.5},)).frame
    a = frame[(frame.attention == "ssmax(s=0.5)") & (frame.metric == "mean_nll")].value.to_numpy()
    b = single[(single.attention == "ssmax") & (single.metric == "mean_nll")].value.to_numpy()
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)

    table = pd.read_csv(outcome.folder / "calibration.csv")
    assert set(table.selected_on) == {ORACLE}
    for label, part in table.groupby("attention"):
        nll = frame[(frame.attention == label) & (frame.metric == "mean_nll")].value.to_numpy()
        low, high = scipy_stats.t.interval(0.95, len(nll) - 1, loc=nll.mean(), scale=scipy_stats.sem(nll))
        assert part.mean_nll.iloc[0] == pytest.approx(nll.mean(), abs=1e-12)
        assert (part.mean_nll_ci_low.iloc[0], part.mean_nll_ci_high.iloc[0]) == pytest.approx((low, high), abs=1e-9)
    best = table.loc[table.mean_nll.idxmin(), "attention"]  # lower NLL is better
    assert table.set_index("attention").selected.to_dict() == {a: a == best for a in table.attention}

    summary = pd.read_csv(outcome.folder / "summary.csv")
    assert set(summary[summary.attention == best].selected) == {True}
    assert summary[summary.attention == "softmax"].selected.isna().all()  # not part of a sweep
    manifest = json.loads((outcome.folder / "manifest.json").read_text())
    assert manifest["calibration"]["oracle"] is True and manifest["calibration"]["selected"] == {"ssmax": best}
    assert (outcome.folder / "plots" / "calibration.png").stat().st_size > 0


def test_calibrate_on_seed_chooses_on_other_samples(tiny_checkpoint, tmp_path):
    attention = expand(["ssmax"], {"s": [0.2, 1.0]})
    outcome = _run(tiny_checkpoint, tmp_path / "run", attention, calibrate_on="seed:7")
    calibration_run = tmp_path / "run-calibration"
    cal_frame = pd.read_parquet(calibration_run / "results.parquet")
    assert set(cal_frame.seed) == {7} and set(outcome.frame.seed) == {1234}
    cal_nll = cal_frame[cal_frame.metric == "mean_nll"].groupby("attention").value.mean()
    table = pd.read_csv(outcome.folder / "calibration.csv")
    assert set(table.selected_on) == {"seed:7"}
    assert table.set_index("attention").selected.idxmax() == cal_nll.idxmin()  # chosen on seed 7's samples
    eval_nll = outcome.frame[outcome.frame.metric == "mean_nll"].groupby("attention").value.mean()
    np.testing.assert_allclose(table.set_index("attention").eval_mean_nll[eval_nll.index], eval_nll, atol=1e-12)
    manifest = json.loads((outcome.folder / "manifest.json").read_text())
    assert manifest["calibration"]["oracle"] is False
    assert manifest["calibration"]["calibration_run"] == str(calibration_run)
    with pytest.raises(ConfigError, match="evaluation samples themselves"):
        _run(tiny_checkpoint, tmp_path / "same", attention, calibrate_on="seed:1234")


def test_ties_go_to_the_secondary_metric_then_the_first_listed():
    from evalkit.core.registry import get_task
    from evalkit.core.task import TaskContext

    task_cls = get_task("needle")
    task = task_cls(task_cls.Options(lengths="64", depths="50", trials=2), TaskContext(None, None, True, 0))
    rows = [
        {"attention": a, "context_length": 64, "depth": 50.0, "trial": t, "metric": m, "value": v}
        for a, lp in (("ssmax(s=0.3)", -2.0), ("ssmax(s=0.4)", -1.0), ("ssmax(s=0.5)", -1.0))
        for t in range(2)
        for m, v in (("greedy_correct", 1.0), ("answer_logprob", lp))
    ]
    table = choose(pd.DataFrame(rows), task)
    assert table.set_index("attention").selected.to_dict() == {
        "ssmax(s=0.3)": False,
        "ssmax(s=0.4)": True,
        "ssmax(s=0.5)": False,
    }


def test_cli_sweep_flags_and_bad_values(tiny_checkpoint, tmp_path):
    import cli

    app = cli.register_tasks()
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(
        app,
        [
            "run",
            "perplexity",
            "--model",
            str(tiny_checkpoint),
            "--attention",
            "softmax,mistral-beta",
            "--beta",
            "0.1,0.4",
            "--original-length",
            "32",
            "--lengths",
            "64",
            "--samples",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "results.parquet")
    assert list(pd.unique(frame.attention)) == ["softmax", "mistral-beta(beta=0.1)", "mistral-beta(beta=0.4)"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(a["label"], a.get("beta")) for a in manifest["attention"][1:]] == [
        ("mistral-beta(beta=0.1)", 0.1),
        ("mistral-beta(beta=0.4)", 0.4),
    ]
    bad = runner.invoke(
        app,
        [
            "run",
            "perplexity",
            "--model",
            str(tiny_checkpoint),
            "--attention",
            "ssmax",
            "--ssmax-s",
            "0.3,0.5",
            "--calibrate-on",
            "fold:3",
            "--device",
            "cpu",
        ],
    )
    assert bad.exit_code == 2 and "--calibrate-on" in bad.output


def test_calibrate_on_a_dataset_swaps_only_the_text(tmp_path):
    from pathlib import Path

    from evalkit.core.registry import get_task
    from evalkit.run.calibration import calibration_config

    config = RunConfig("perplexity", "m", task_options={"lengths": "64"}, calibrate_on="dataset:held_out.txt", seed=3)
    cal = calibration_config(config, get_task("perplexity"), Path("results/run"))
    assert cal.task_options == {"lengths": "64", "dataset": "held_out.txt"} and cal.seed == 3
    assert cal.out == "results/run-calibration" and cal.calibrate_on is None
    same = RunConfig("perplexity", "m", task_options={"dataset": "a.txt"}, calibrate_on="dataset:a.txt")
    with pytest.raises(ConfigError, match="themselves"):
        calibration_config(same, get_task("perplexity"), Path("r"))
