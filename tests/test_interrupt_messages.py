"""Ctrl-C outside a run's samples says what it stopped, and offers --resume only where finished rows exist."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import cli

runner = CliRunner()
APP = cli.register_tasks()
GRID = ["--lengths", "256", "--depths", "50", "--trials", "1"]


def needle(model, out, *extra):
    args = ["run", "needle", "--model", str(model), "--device", "cpu", "--quiet", "--out", str(out), *GRID, *extra]
    return runner.invoke(APP, args)


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.fixture
def ctrl_c_while_loading(monkeypatch):
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", interrupt)


def test_ctrl_c_while_loading_writes_nothing_and_offers_no_resume(tiny_checkpoint, tmp_path, ctrl_c_while_loading):
    out = tmp_path / "run"
    result = needle(tiny_checkpoint, out)
    assert result.exit_code == 130
    assert f"interrupted while loading the model: nothing was written ({out} was not created)" in result.output
    assert "--resume" not in result.output and not out.exists()


def test_ctrl_c_while_building_samples(tiny_checkpoint, tmp_path, monkeypatch):
    from evalkit.data import haystack

    monkeypatch.setattr(haystack, "build_samples", interrupt)
    result = needle(tiny_checkpoint, tmp_path / "run")
    assert result.exit_code == 130
    assert "interrupted while building the samples: nothing was written" in result.output
    assert "--resume" not in result.output and not (tmp_path / "run").exists()


def test_ctrl_c_while_loading_a_resumed_run_offers_resume(tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert needle(tiny_checkpoint, out).exit_code == 0  # one finished sample in the journal
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", interrupt)
    result = needle(tiny_checkpoint, out, "--resume")
    assert result.exit_code == 130
    assert f"interrupted while loading the model; the finished samples in {out} are kept; continue with:" in (
        result.output
    )
    assert f"--out {out} --resume" in result.output


def test_interrupted_stage_reads_the_traceback():
    from evalkit.cli.common import finished_rows, interrupted_stage

    def load_for():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        load_for()
    assert interrupted_stage(caught.value) == "loading the model"
    with pytest.raises(KeyboardInterrupt) as caught:
        interrupt()
    assert interrupted_stage(caught.value) is None  # no known step: the message says only "interrupted"
    assert not finished_rows(None) and not finished_rows("/nonexistent/evalkit-run")
