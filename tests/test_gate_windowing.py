"""The gate's numbers are summary.csv's under every windowing mode (random, --stride, --match lm-eval)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

import cli

runner = CliRunner()
APP = cli.register_tasks()
GATES = "".join(
    f'[[gate]]\ntask = "perplexity"\nmetric = "{metric}"\ncontext_length = {length}\nop = "<="\nvalue = 1e6\n'
    for metric in ("mean_nll", "perplexity")
    for length in (64, 128)
)


@pytest.mark.parametrize("mode", [[], ["--stride", "48"], ["--match", "lm-eval"]])
def test_gate_values_equal_summary_csv(tiny_checkpoint, tmp_path, mode):
    out = tmp_path / "run"
    result = runner.invoke(
        APP,
        [
            "run",
            "perplexity",
            "--model",
            str(tiny_checkpoint),
            "--lengths",
            "64,128",
            "--samples",
            "4",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
            *mode,
        ],
    )
    assert result.exit_code == 0, result.output
    gates = tmp_path / "gates.toml"
    gates.write_text(GATES)
    result = runner.invoke(APP, ["gate", "--config", str(gates), str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv").set_index("context_length")
    rows = json.loads(result.output)["rows"]
    assert len(rows) == 4
    for row in rows:
        expected = summary.loc[row["context_length"]]
        for column, key in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
            assert row[column] == pytest.approx(expected[row["metric"] + key], rel=1e-12), (mode, row)
        assert row["units"] == expected["units"]
