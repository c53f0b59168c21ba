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
    result = runner.invoke(APP, ["run", "needle", "--model", str(tiny_checkpoint), "--lengths", "192", "--depths", "0,100",
                                 "--trials", "2", "--out", str(out), "--device", "cpu", "--quiet"])
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
    result = runner.invoke(APP, ["compare", str(needle_run), str(worse), "--tolerance", "0.1", "--format", "markdown",
                                 "--junit", str(junit)])
    assert result.exit_code == 1, result.output
    assert "answer_logprob" in result.output and "❌" in result.output
    failures = ET.parse(junit).getroot().iter("failure")
    assert len(list(failures)) == 1
    assert runner.invoke(APP, ["compare", str(needle_run), str(worse), "--tolerance", "0.6"]).exit_code == 0
    result = runner.invoke(APP, ["compare", str(needle_run), str(tmp_path / "missing")])
    assert result.exit_code == 2 and "missing" in result.output


def test_gate_exit_codes(needle_run, tmp_path):
    gates = tmp_path / "gates.toml"
    gates.write_text('[[gate]]\ntask = "needle"\nmetric = "answer_rank"\nop = ">="\nvalue = 1\n')
    assert runner.invoke(APP, ["gate", str(needle_run), "--config", str(gates)]).exit_code == 0
    gates.write_text('[[gate]]\ntask = "needle"\nmetric = "greedy_correct"\nop = ">="\nvalue = 1.5\n')
    assert runner.invoke(APP, ["gate", str(needle_run), "--config", str(gates), "--format", "json"]).exit_code == 1
    gates.write_text('[[gate]]\ntask = "needle"\nmetric = "greedy_correct"\nop = "=>"\nvalue = 1\n')
    assert runner.invoke(APP, ["gate", str(needle_run), "--config", str(gates)]).exit_code == 2


def test_torchrun_two_processes_equal_one_process(tiny_checkpoint, tmp_path):
    """2 CPU processes (gloo) shard the samples; rank 0 merges: the same rows as one process."""
    args = ["run", "perplexity", "--model", str(tiny_checkpoint), "--lengths", "64,96", "--samples", "3", "--device", "cpu",
            "--quiet"]
    assert runner.invoke(APP, [*args, "--out", str(tmp_path / "one")]).exit_code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
                           "-m", "evalkit", *args, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "two" / "journal.rank1.jsonl").stat().st_size > 0  # rank 1 really did half the work
    keys = ["context_length", "sample", "position_bin", "metric"]
    one, two = (pd.read_parquet(tmp_path / x / "results.parquet").drop(columns="run_id").sort_values(keys).reset_index(drop=True)
                for x in ("one", "two"))
    pd.testing.assert_frame_equal(one, two, check_exact=False, atol=1e-6)
