"""What a new user tripped on (issue 24, item 7): each one through the command a user types."""

from __future__ import annotations

import re

from typer.testing import CliRunner

import cli

runner = CliRunner()
APP = cli.register_tasks()


def test_run_table_has_no_nan_threshold(tiny_checkpoint, tmp_path):
    # the threshold belongs to the "all" row; per-length rows have none and show "-", also for rel:F
    for threshold in ("rel:0.9", "0.856"):
        result = runner.invoke(APP, ["run", "needle", "--model", str(tiny_checkpoint), "--lengths", "96,128",
                                     "--depths", "0,100", "--trials", "1", "--threshold", threshold,
                                     "--out", str(tmp_path / f"run{len(threshold)}"), "--device", "cpu"],
                               env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert "threshold" in result.output and not re.search(r"\bnan\b", result.output, re.IGNORECASE)


def test_relative_gate_table_shows_its_threshold(tiny_checkpoint, tmp_path):
    runs = {}
    for name, seed in (("base", "1234"), ("cand", "1234"), ("other", "7")):
        runs[name] = tmp_path / name
        result = runner.invoke(APP, ["run", "perplexity", "--model", str(tiny_checkpoint), "--lengths", "64",
                                     "--samples", "2", "--seed", seed, "--out", str(runs[name]), "--device", "cpu",
                                     "--quiet"])
        assert result.exit_code == 0, result.output
    gates = tmp_path / "gates.toml"
    gates.write_text(f'baseline = "{runs["base"]}"\n[[gate]]\ntask = "perplexity"\nmetric = "perplexity"\n'
                     'op = "<="\nbaseline_factor = 1.02\n')
    from evalkit.report.gate import check_gates, load_gates

    threshold = check_gates(runs["cand"], load_gates(gates)).rows.threshold.iloc[0]
    for name in ("cand", "other"):  # "other": a failing (baseline comparable) row without a threshold
        result = runner.invoke(APP, ["gate", "--config", str(gates), str(runs[name])], env={"COLUMNS": "200"})
        assert f"{threshold:.5g}" in result.output and not re.search(r"\bnan\b", result.output, re.IGNORECASE)
