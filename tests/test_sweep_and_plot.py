"""``evalkit sweep`` over a small grid of tiny models, resume after an interrupt, and ``evalkit plot``."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

import cli
from evalkit.backends.transformers import TransformersBackend
from tests.conftest import make_llama

runner = CliRunner()
APP = cli.register_tasks()


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, tokenizer):
    folders = []
    for seed in (1, 2):
        folder = tmp_path_factory.mktemp(f"model{seed}")
        make_llama(len(tokenizer), seed=seed).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders.append(folder)
    return folders


def study_file(tmp_path, checkpoints, out):
    models = "".join(f'[[model]]\npath = "{c}"\nname = "m{k}"\n' for k, c in enumerate(checkpoints))
    text = (
        f'out = "{out}"\ndevice = "cpu"\n{models}'
        '[[attention]]\nname = "softmax"\n[[attention]]\nname = "ssmax"\ns = 0.5\n'
        '[[task]]\nname = "perplexity"\nlengths = "64,96"\nsamples = 2\n'
        '[[task]]\nname = "needle"\nlengths = "192"\ndepths = "0,100"\ntrials = 1\n'
    )
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def tables(out):
    return {
        p.parent.relative_to(out).as_posix(): pd.read_parquet(p).drop(columns="run_id")
        for p in sorted(out.rglob("results.parquet"))
    }


def test_sweep_grid_resume_and_plot(two_checkpoints, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = TransformersBackend.answer

    def counted(self, requests):
        calls["n"] += 1
        if calls["n"] == interrupt_at:
            raise KeyboardInterrupt  # Ctrl-C inside the third cell
        return original(self, requests)

    monkeypatch.setattr(TransformersBackend, "answer", counted)
    interrupt_at = None
    full = tmp_path / "full"
    result = runner.invoke(APP, ["sweep", "--config", str(study_file(tmp_path, two_checkpoints, full)), "--quiet"])
    assert result.exit_code == 0, result.output
    full_calls = calls["n"]
    want = tables(full)
    assert sorted(want) == ["m0/needle", "m0/perplexity", "m1/needle", "m1/perplexity"]
    for frame in want.values():
        assert set(frame.attention) == {"softmax", "ssmax"}

    part = tmp_path / "part"
    config = study_file(tmp_path, two_checkpoints, part)
    calls["n"], interrupt_at = 0, 6  # cells: perplexity 2 batches (nested windows, one per variant), needle 2
    result = runner.invoke(APP, ["sweep", "--config", str(config), "--quiet"])
    assert result.exit_code == 130, result.output
    assert "--resume" in result.output
    calls["n"], interrupt_at = 0, None
    result = runner.invoke(APP, ["sweep", "--config", str(config), "--quiet", "--resume"])
    assert result.exit_code == 0, result.output
    assert calls["n"] == full_calls - 5  # the 5 batches finished before Ctrl-C are not run again
    got = tables(part)
    assert sorted(got) == sorted(want)
    for key in want:
        keys = [c for c in want[key].columns if c not in ("value",)]
        a = got[key].sort_values(keys).reset_index(drop=True)
        b = want[key].sort_values(keys).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6)

    fig = tmp_path / "fig"
    result = runner.invoke(
        APP,
        [
            "plot",
            str(full / "m0" / "perplexity"),
            str(full / "m1" / "perplexity"),
            str(full / "m0" / "needle"),
            "--out",
            str(fig),
        ],
    )
    assert result.exit_code == 0, result.output
    for name in [
        "perplexity_perplexity_vs_length.png",
        "perplexity_perplexity_vs_length.svg",
        "needle_greedy_correct_vs_length.png",
    ]:
        assert (fig / name).stat().st_size > 5_000
    runs = [str(full / "m0" / "needle"), str(full / "m1" / "needle")]
    result = runner.invoke(APP, ["plot", *runs, "--out", str(fig), "--metric", "answer_logprob"])
    assert result.exit_code == 0 and (fig / "needle_answer_logprob_vs_length.png").stat().st_size > 5_000
    result = runner.invoke(APP, ["plot", *runs, "--out", str(fig), "--metric", "entropy"])
    assert result.exit_code == 2 and "answer_logprob" in result.output  # names the metrics there are


def test_sweep_dry_run_and_bad_config(two_checkpoints, tmp_path):
    config = study_file(tmp_path, two_checkpoints, tmp_path / "out")
    result = runner.invoke(APP, ["sweep", "--config", str(config), "--dry-run"])
    assert result.exit_code == 0 and "4 runs x 2 attention variants" in result.output
    assert not (tmp_path / "out").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text('[[model]]\npath = "x"\n[[task]]\nname = "perplexity"\nlenghts = "1k"\n')
    result = runner.invoke(APP, ["sweep", "--config", str(bad)])
    assert result.exit_code == 2 and "lenghts" in result.output
    bad.write_text('colour = "red"\n')
    result = runner.invoke(APP, ["sweep", "--config", str(bad)])
    assert result.exit_code == 2 and "colour" in result.output
