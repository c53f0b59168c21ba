"""The docs' CI recipe (NOTES-issue24.md, statistics & CI page), sized by `evalkit plan`, on a tiny model.

A random tiny model retrieves nothing, so the test plays the regression the recipe is meant to catch
by giving it a baseline that retrieved (its greedy_correct rows set to 1): the recipe's compare
must fail it, its gate must fail the collapsed run, and a run compared with itself must pass.
"""

from __future__ import annotations

import re
import shutil

import pandas as pd
from typer.testing import CliRunner

import cli

runner = CliRunner()
APP = cli.register_tasks()


def test_ci_recipe_catches_a_collapse(tiny_checkpoint, tmp_path):
    planned = runner.invoke(APP, ["plan", "--accuracy", "0.96", "--detect", "0.9", "--cells", "4"])
    assert planned.exit_code == 0, planned.output
    trials = int(re.search(r"--trials (\d+)", planned.output).group(1))
    assert trials == 9
    cand = tmp_path / "candidate"
    result = runner.invoke(
        APP,
        [
            "run",
            "needle",
            "--model",
            str(tiny_checkpoint),
            "--lengths",
            "96,192",
            "--depths",
            "0:100:50",
            "--trials",
            str(trials),
            "--out",
            str(cand),
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    base = tmp_path / "baseline"
    shutil.copytree(cand, base)
    frame = pd.read_parquet(base / "results.parquet")
    frame.loc[frame.metric == "greedy_correct", "value"] = 1.0  # the baseline that still retrieved
    frame.loc[frame.metric == "answer_logprob", "value"] = -0.1
    frame.to_parquet(base / "results.parquet", index=False)

    assert runner.invoke(APP, ["compare", str(cand), str(cand)]).exit_code == 0
    junit = tmp_path / "compare.xml"
    result = runner.invoke(APP, ["compare", str(base), str(cand), "--format", "markdown", "--junit", str(junit)])
    assert result.exit_code == 1, result.output
    assert "Holm" in result.output and "greedy_correct" in junit.read_text()

    gates = tmp_path / "gates.toml"
    gates.write_text(
        '[[gate]]\ntask = "needle"\nmetric = "greedy_correct"\ncontext_length = 192\nop = ">="\n'
        'value = 0.5\nrequire = "ci"\n'
    )
    assert runner.invoke(APP, ["gate", "--config", str(gates), str(base)]).exit_code == 0  # 27/27 from 9 trials
    assert runner.invoke(APP, ["gate", "--config", str(gates), str(cand)]).exit_code == 1
