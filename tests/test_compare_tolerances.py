"""Per-metric tolerances from a TOML file and --nll-tolerance, through `evalkit compare`."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

import cli
from tests.test_compare import perplexity_run

runner = CliRunner()
APP = cli.register_tasks()


def compare(*args):
    return runner.invoke(APP, ["compare", *map(str, args), "--format", "json"])


def test_nll_tolerance_decides_both_rows(tmp_path):
    base = perplexity_run(tmp_path / "base")
    cand = perplexity_run(tmp_path / "cand", shift={("ssmax", 512): 0.02})  # +0.02 NLL on every window
    assert compare(base, cand).exit_code == 1  # beyond noise, above the float floor: both rows regress
    for flags in (["--nll-tolerance", "0.05"], ["--tolerances", _toml(tmp_path, "mean_nll = 0.05\n")]):
        result = compare(base, cand, *flags)
        assert result.exit_code == 0, result.output
        rows = {(r["attention"], r["context_length"], r["metric"]): r for r in json.loads(result.output)["rows"]}
        nll, ppl = rows[("ssmax", 512, "mean_nll")], rows[("ssmax", 512, "perplexity")]
        assert nll["tolerance"] == pytest.approx(0.05 + 1e-9 + 1e-6 * abs(nll["baseline"]))
        # one tolerance, carried through exp: b x (exp(0.05) - 1), plus the float floor
        b = ppl["baseline"]
        assert ppl["tolerance"] == pytest.approx(b * (math.exp(0.05) - 1) + 1e-9 + 1e-6 * b)
    assert compare(base, cand, "--nll-tolerance", "0.01").exit_code == 1  # 0.02 is more than 0.01


def test_tolerances_file_per_metric_and_its_errors(tmp_path):
    base = perplexity_run(tmp_path / "base")
    cand = perplexity_run(tmp_path / "cand", shift={("ssmax", 512): 0.02})
    tight = _toml(tmp_path, "mean_nll = 0.05\nperplexity = { absolute = 0.1 }\n", "tight.toml")
    result = compare(base, cand, "--tolerances", tight)  # an explicit perplexity entry wins over exp
    assert result.exit_code == 1
    regressed = {r["metric"] for r in json.loads(result.output)["rows"] if r["regression"]}
    assert regressed == {"perplexity"}
    rel = _toml(tmp_path, "mean_nll = { relative = 0.01 }\n", "rel.toml")  # 1% of ~2.5 nats = 0.025 > 0.02
    assert compare(base, cand, "--tolerances", rel).exit_code == 0
    bad = _toml(tmp_path, "mean_nl = 0.01\nperplexity = -1\ngreedy_correct = { abs = 1 }\n", "bad.toml")
    result = runner.invoke(APP, ["compare", str(base), str(cand), "--tolerances", str(bad)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "did you mean 'mean_nll'" in text and "perplexity: tolerances must be" in text
    assert "greedy_correct: give a number" in text
    result = runner.invoke(APP, ["compare", str(base), str(cand), "--tolerances", str(tight), "--nll-tolerance", "0.1"])
    assert result.exit_code == 2 and "give it once" in result.output
    result = runner.invoke(APP, ["compare", str(base), str(cand), "--tolerances", str(tmp_path / "none.toml")])
    assert result.exit_code == 2 and "not found" in result.output


def _toml(folder, text, name="tol.toml"):
    path = folder / name
    path.write_text(text)
    return path
