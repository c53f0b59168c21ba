"""``--trials auto:D``: the needle grid sized by ``evalkit plan`` before any sample is built."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from typer.testing import CliRunner

import cli
from evalkit.core.errors import ConfigError
from evalkit.data.options import AutoTrials, parse_trials

runner = CliRunner()
APP = cli.register_tasks()


def needle(checkpoint, out, *extra):
    return runner.invoke(
        APP,
        [
            "run",
            "needle",
            "--model",
            str(checkpoint),
            "--lengths",
            "96,128",
            "--depths",
            "0,100",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
            *map(str, extra),
        ],
    )


def planned_units(*args) -> int:
    """What `evalkit plan` prints for these arguments: the independent reference."""
    result = runner.invoke(APP, ["plan", *args])
    assert result.exit_code == 0, result.output
    return int(re.search(r"(\d+) units per cell", result.output).group(1))


def test_auto_trials_runs_the_planned_number(tiny_checkpoint, tmp_path):
    out = tmp_path / "auto"
    result = needle(tiny_checkpoint, out, "--trials", "auto:0.9")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    # 2 lengths x (greedy_correct, answer_logprob) = 4 judged cells; worst case: the drop passes through 50%
    expected = planned_units("--accuracy", "0.95", "--detect", "0.9", "--cells", "4")
    assert manifest["trials"] == {
        "spec": "auto:0.9",
        "resolved": expected,
        "rule": "evalkit plan --accuracy 0.95 --detect 0.9 --cells 4 --power 0.8",
    }
    assert manifest["task_options"]["trials"] == "auto:0.9"
    summary = pd.read_csv(out / "summary.csv")
    assert (summary.units == expected).all() and expected >= 5  # 2^-k must pass below 0.05 / 4

    sized = tmp_path / "sized"  # the same spec with a stated accuracy, and from a baseline run's own spread
    assert needle(tiny_checkpoint, sized, "--trials", "auto:0.5@0.9").exit_code == 0
    stated = json.loads((sized / "manifest.json").read_text())["trials"]
    assert stated["resolved"] == planned_units("--accuracy", "0.9", "--detect", "0.5", "--cells", "4")
    from_run = tmp_path / "from-run"
    assert needle(tiny_checkpoint, from_run, "--trials", "auto:0.9", "--plan-baseline", sized).exit_code == 0
    by_baseline = json.loads((from_run / "manifest.json").read_text())["trials"]
    assert by_baseline["resolved"] == planned_units("--baseline", str(sized), "--detect", "0.9")
    assert by_baseline["rule"].startswith(f"evalkit plan --baseline {sized}")


@pytest.mark.parametrize(
    "spec, words",
    [
        ("auto", "bad --trials"),
        ("auto:x", "bad --trials"),
        ("auto:0", "must be in (0, 1]"),
        ("auto:0.3@0.2", "a drop of d from a"),
        ("0", "at least 1"),
        ("many", "auto:0.10"),
    ],
)
def test_bad_trials_spec_is_one_line_before_the_load(tiny_checkpoint, tmp_path, spec, words):
    result = needle(tiny_checkpoint, tmp_path / "o", "--trials", spec)
    assert result.exit_code == 2 and words in result.output.lower(), result.output
    assert "Traceback" not in result.output and not (tmp_path / "o").exists()


def test_trials_spec_parsing_and_typed_options():
    from tasks.needle import NeedleOptions

    assert parse_trials("5") == 5 and parse_trials(" auto:0.10 ") == AutoTrials(0.1)
    assert parse_trials("auto:0.2@0.9") == AutoTrials(0.2, 0.9)
    with pytest.raises(ConfigError):
        parse_trials("auto:0.1@")
    assert NeedleOptions(trials=6).trials == "6"  # an int from Python or a sweep TOML is the same option
    result = runner.invoke(APP, ["run", "needle", "--model", "ckpt/", "--trials", "auto:0.10"])
    assert "model 'ckpt/' not found" in result.output  # the documented command parses; only the model is missing


def test_plan_baseline_and_focus_refuse_what_they_cannot_use(tiny_checkpoint, tmp_path):
    result = needle(tiny_checkpoint, tmp_path / "o", "--trials", "3", "--plan-baseline", tmp_path)
    assert result.exit_code == 2 and "--plan-baseline sizes --trials auto:d only" in result.output.lower()
    result = runner.invoke(
        APP,
        [
            "run",
            "focus",
            "--model",
            str(tiny_checkpoint),
            "--trials",
            "auto:0.5",
            "--out",
            str(tmp_path / "f"),
            "--quiet",
        ],
    )
    assert result.exit_code == 2 and "give focus a number of trials" in result.output


def test_a_run_started_with_int_trials_resumes():
    from evalkit.store.results import _differences

    assert _differences({"trials": 2, "lengths": "1k"}, {"trials": "2", "lengths": "1k"}) == []
    assert _differences({"trials": 2}, {"trials": "3"}) == ["trials: 2 -> '3'"]
