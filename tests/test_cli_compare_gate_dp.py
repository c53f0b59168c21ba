"""CLI wiring of compare and gate (exit codes, report files), and data parallelism under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
from typer.testing import CliRunner

import cli

runner = CliRunner()
APP = cli.register_tasks()


@pytest.fixture(scope="module")
def needle_run(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("runs") / "base"
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
            "0,100",
            "--trials",
            "2",
            "--attention",
            "softmax,ssmax",
            "--ssmax-s",
            "0.43",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def worse_copy(run, folder, metric, delta):
    import shutil

    shutil.copytree(run, folder)
    frame = pd.read_parquet(folder / "results.parquet")
    frame.loc[frame.metric == metric, "value"] += delta
    frame.to_parquet(folder / "results.parquet", index=False)
    return folder


def test_compare_exit_codes_and_reports(needle_run, tmp_path):
    assert runner.invoke(APP, ["compare", str(needle_run), str(needle_run)]).exit_code == 0
    worse = worse_copy(needle_run, tmp_path / "worse", "answer_logprob", -0.5)
    junit = tmp_path / "report.xml"
    result = runner.invoke(
        APP,
        ["compare", str(needle_run), str(worse), "--tolerance", "0.1", "--format", "markdown", "--junit", str(junit)],
    )
    assert result.exit_code == 1, result.output
    assert "answer_logprob" in result.output and "❌" in result.output and "paired t" in result.output
    failures = [f.get("message") for f in ET.parse(junit).getroot().iter("failure")]
    assert len(failures) == 4 and all("answer_logprob" in f for f in failures)  # 2 variants x 2 lengths
    assert runner.invoke(APP, ["compare", str(needle_run), str(worse), "--tolerance", "0.6"]).exit_code == 0
    result = runner.invoke(APP, ["compare", str(needle_run), str(tmp_path / "missing")])
    assert result.exit_code == 2 and "missing" in result.output


def test_compare_refuses_an_interrupted_candidate(needle_run, tmp_path):
    import json
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(needle_run, cut)
    manifest = json.loads((cut / "manifest.json").read_text())
    manifest.update(interrupted=True, finished_samples=3)
    (cut / "manifest.json").write_text(json.dumps(manifest))
    junit = tmp_path / "report.xml"
    for fmt in ("table", "markdown", "json"):
        result = runner.invoke(
            APP, ["compare", str(needle_run), str(cut), "--format", fmt, "--junit", str(junit)], env={"COLUMNS": "300"}
        )
        assert result.exit_code == 1 and "interrupted" in result.output and "3 of 16" in result.output, result.output
        assert any("interrupted" in f.get("message") for f in ET.parse(junit).getroot().iter("failure"))


def test_compare_variants_of_one_run(needle_run):
    result = runner.invoke(
        APP,
        [
            "compare",
            str(needle_run),
            "--baseline",
            "attention=softmax",
            "--candidate",
            "attention=ssmax",
            "--format",
            "markdown",
        ],
    )
    assert result.exit_code in (0, 1), result.output
    assert "softmax → ssmax" in result.output and "Pairing: paired prompt by prompt" in result.output
    assert "Effective context length" in result.output and "unit seed+trial" in result.output
    result = runner.invoke(APP, ["compare", str(needle_run), "--baseline", "attention=softmax"])
    assert result.exit_code == 2 and "--candidate" in result.output


def test_gate_exit_codes(needle_run, tmp_path):
    gates = tmp_path / "gates.toml"
    gates.write_text('[[gate]]\ntask = "needle"\nmetric = "answer_rank"\nop = ">="\nvalue = 1\n')
    assert runner.invoke(APP, ["gate", str(needle_run), "--config", str(gates)]).exit_code == 0
    gates.write_text('[[gate]]\ntask = "needle"\nmetric = "greedy_correct"\nop = ">="\nvalue = 1.5\n')
    result = runner.invoke(APP, ["gate", str(needle_run), "--config", str(gates), "--format", "json"])
    assert result.exit_code == 1 and '"ci_low"' in result.output and '"n": 8' in result.output
    gates.write_text('[[gate]]\ntask = "needle"\nmetric = "greedy_correct"\nop = "=>"\nvalue = 1\n')
    assert runner.invoke(APP, ["gate", str(needle_run), "--config", str(gates)]).exit_code == 2


def test_torchrun_two_processes_equal_one_process(tiny_checkpoint, tmp_path):
    """2 CPU processes (gloo) shard the samples; rank 0 merges: the same rows as one process."""
    args = [
        "run",
        "perplexity",
        "--model",
        str(tiny_checkpoint),
        "--lengths",
        "64,96",
        "--samples",
        "3",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert runner.invoke(APP, [*args, "--out", str(tmp_path / "one")]).exit_code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29533",
            "-m",
            "evalkit",
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(__file__)),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "two" / "journal.rank1.jsonl").stat().st_size > 0  # rank 1 really did half the work
    keys = ["context_length", "sample", "position_bin", "metric"]
    one, two = (
        pd.read_parquet(tmp_path / x / "results.parquet")
        .drop(columns="run_id")
        .sort_values(keys)
        .reset_index(drop=True)
        for x in ("one", "two")
    )
    pd.testing.assert_frame_equal(one, two, check_exact=False, atol=1e-6)
