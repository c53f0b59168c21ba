"""evalkit.store.run_folder: the one Run and load_run, the one completeness rule (track, compare and
gate agree on it, first-variant-only samples included), older manifests, the short repr; and the
compare/gate trips of issue 32 (a run compared with itself, the gate file format in --help, a
relative baseline)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from test_compare import needle_run, perplexity_run
from typer.testing import CliRunner

import cli
import evalkit
from evalkit.core.errors import ResultsError
from evalkit.report import compare, gate
from evalkit.run.track import is_finished
from evalkit.store.run_folder import completeness, load_run, planned_answers

APP = cli.register_tasks()
runner = CliRunner()


def set_manifest(folder, **changes):
    path = folder / "manifest.json"
    manifest = {k: v for k, v in {**json.loads(path.read_text()), **changes}.items() if v is not None}
    path.write_text(json.dumps(manifest))
    return manifest


# -- one completeness rule -------------------------------------------------------------------------


def test_first_variant_only_samples_are_complete_for_track_compare_and_gate(tmp_path):
    """LongPPL's evaluator passes run under the first variant only: 2 windows x 2 variants + 1 pass = 5
    answers, not 3 samples x 2 variants = 6. track used to rerun such a run forever; compare passed it."""
    folder = perplexity_run(tmp_path / "longppl", lengths=(512,), samples=2)
    set_manifest(folder, samples=3, planned_answers=5, finished_samples=5, step=100, series="ckpts")
    run = load_run(folder)
    assert run.complete and planned_answers(run.manifest) == 5 and 5 < 3 * 2
    assert is_finished(folder)  # the same verdict: a resume skips it
    assert not [ch for ch in compare.compare_runs(folder, folder).checks if not ch["passed"]]
    assert gate.check_gates(folder, _perplexity_gate(tmp_path)).exit_code == 0

    set_manifest(folder, finished_samples=4)  # one answer short: incomplete for every reader
    run = load_run(folder)
    assert not run.complete and "4 of 5 samples finished" in run.completeness.problem
    assert not is_finished(folder)
    c = compare.compare_runs(perplexity_run(tmp_path / "b", lengths=(512,), samples=2), folder)
    assert c.exit_code == 1 and any("candidate complete" in f and "4 of 5" in f for f in c.summary["failed_checks"])
    report = gate.check_gates(folder, _perplexity_gate(tmp_path))
    assert report.exit_code == 1 and "4 of 5" in report.rows.set_index("gate").loc["(run complete)", "reason"]


def _perplexity_gate(tmp_path):
    path = tmp_path / "gates.toml"
    path.write_text('[[gate]]\ntask = "perplexity"\nmetric = "perplexity"\nop = "<="\nvalue = 1e9\n')
    return gate.load_gates(path)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"interrupted": True}, "was interrupted (3 of 6 samples finished)"),
        ({"interrupted": None}, "no end record"),  # still running, or killed: the end record was never written
        ({"finished_samples": None}, "records no sample counts"),
    ],
)
def test_compare_and_gate_refuse_what_did_not_finish(tmp_path, changes, why):
    base = perplexity_run(tmp_path / "base", lengths=(512,))
    cand = perplexity_run(tmp_path / "cand", lengths=(512,))
    set_manifest(cand, **{"samples": 3, "finished_samples": 3, **changes})
    assert why in load_run(cand).completeness.problem and not is_finished(cand)
    c = compare.compare_runs(base, cand)
    assert c.exit_code == 1 and c.regressions.empty  # the numbers are identical: only completeness fails it
    assert any(why in f for f in c.summary["failed_checks"])
    result = runner.invoke(APP, ["compare", str(base), str(cand), "--format", "markdown"])  # cells unwrapped
    assert result.exit_code == 1 and why.split(" (")[0] in result.output
    _perplexity_gate(tmp_path)
    result = runner.invoke(APP, ["gate", str(cand), "--config", str(tmp_path / "gates.toml")])
    assert result.exit_code == 1 and why.split(" (")[0] in result.output


def test_completeness_without_a_manifest():
    c = completeness({}, "results/x")
    assert not c.complete and "no readable manifest.json" in c.problem


# -- one reader, older folders -----------------------------------------------------------------------


def test_a_folder_from_an_older_version_loads(tmp_path):
    """A manifest without the newer keys (planned_answers, identity, step, hashes, timings): it loads,
    and its plan is samples x variants, as every sample ran under every variant then."""
    folder = needle_run(tmp_path / "old", [1, 0, 1, 1])
    old = {
        "run_id": "old",
        "seed": 1234,
        "attention": [{"name": "softmax", "label": "softmax"}],
        "samples": 4,
        "finished_samples": 4,
        "interrupted": False,
    }
    (folder / "manifest.json").write_text(json.dumps(old))
    for run in (load_run(folder), evalkit.load_run(folder)):
        assert run.complete and run.completeness.planned == 4 and run.task == "needle"
        assert run.variants == ["softmax"] and run.lengths == [2048] and run.keys == ("depth", "trial", "needle")
        assert list(run.frame.seed.unique()) == [1234] and "run" in run.frame and "step" in run.frame
    assert isinstance(evalkit.load_run(folder), evalkit.Run)
    # no summary.csv in this folder: the task's own summary of the rows
    summary = load_run(folder).summary
    assert summary.accuracy.tolist() == [0.75, 0.75] and summary.context_length.astype(str).tolist() == ["2048", "all"]

    (folder / "manifest.json").write_text("{not json")
    run = load_run(folder)  # a corrupt manifest loads, and says the run cannot be shown to have finished
    assert (
        run.manifest == {} and not run.complete and "no readable manifest.json" in repr(run) + run.completeness.problem
    )


def test_what_is_not_a_run_folder(tmp_path):
    with pytest.raises(ResultsError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="no results.parquet"):
        load_run(tmp_path / "empty")


def test_run_repr_is_short(tmp_path):
    folder = perplexity_run(tmp_path / "big", samples=40)
    run = evalkit.load_run(folder)
    text = repr(run)
    assert len(run.rows) == 2 * 2 * 40 * 6 and len(text) < 200, text
    assert text == (
        f"Run({str(folder)!r}, task=perplexity, model=tiny, variants=softmax,ssmax, lengths=512,1024, "
        f"rows={len(run.rows)}, complete)"
    )
    set_manifest(folder, interrupted=True)
    assert repr(load_run(folder)).endswith("incomplete: interrupted)")


# -- compare A A (issue 32) --------------------------------------------------------------------------


def test_a_run_compared_with_itself_says_so(tmp_path):
    run = perplexity_run(tmp_path / "a")
    for c in (
        compare.compare_runs(run, run),
        compare.compare_runs(run, evalkit.load_run(run).save(tmp_path / "copy").folder),
    ):
        assert c.exit_code == 0 and c.summary["self_comparison"] is True
        warning = next(ch for ch in c.checks if ch["check"] == "baseline and candidate differ")
        assert warning["passed"] and warning["warning"] and "compared with itself" in warning["reason"]
        assert "no regression (a run compared with itself)" in compare.to_markdown(c)
        assert json.loads(compare.to_json(c))["summary"]["self_comparison"] is True
    result = runner.invoke(APP, ["compare", str(run), str(run)])
    assert result.exit_code == 0 and "a run compared with itself" in result.output
    assert "compared with itself" in result.output.split("a run compared with itself", 1)[1]  # the check says why too
    # two runs, or two selections of one run, are no self-comparison
    other = compare.compare_runs(run, perplexity_run(tmp_path / "b", seed=3))
    assert other.summary["self_comparison"] is False and "itself" not in compare.to_markdown(other)
    sides = compare.compare_runs(run, base_select=["attention=softmax"], cand_select=["attention=ssmax"])
    assert sides.summary["self_comparison"] is False


# -- the gate file format and its relative baseline (issue 32) ----------------------------------------


def test_gate_help_shows_the_file_format_and_it_parses(tmp_path):
    result = runner.invoke(APP, ["gate", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    help_text = result.output
    for key in [f.name for f in gate.fields(gate.Gate)]:
        assert re.search(rf"^\s+(# )?{key} = ", help_text, re.M), f"gate --help does not show {key}"
    assert "relative path is read from this file's folder" in help_text
    block = help_text.split("The gate file (TOML", 1)[1].split("\n", 1)[1]
    toml = block[: block.index("Arguments")].rsplit("\n", 1)[0]  # up to the arguments' panel (plain or boxed)
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "gates.toml"
    path.write_text("\n".join(line.strip() for line in toml.splitlines() if not line.strip().startswith("#")))
    gates = gate.load_gates(path)  # the format the help shows is a valid gate file
    assert len(gates) == 1 and gates[0].baseline == str(tmp_path / "cfg" / "results/other")
    # and the error that points to the help
    bad = tmp_path / "bad.toml"
    bad.write_text('[[gate]]\ntask = "needle"\n')
    result = runner.invoke(APP, ["gate", str(tmp_path), "--config", str(bad)])
    assert result.exit_code == 2 and "see the format in `evalkit gate --help`" in result.output


def test_a_relative_baseline_is_read_from_the_gate_files_folder(tmp_path, monkeypatch):
    perplexity_run(tmp_path / "ci" / "runs" / "base")
    cand = perplexity_run(tmp_path / "cand")
    (tmp_path / "ci" / "gates.toml").write_text(
        'baseline = "runs/base"\n[[gate]]\ntask = "perplexity"\nmetric = "perplexity"\n'
        'op = "<="\nbaseline_factor = 1.5\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the file's folder: runs/base does not exist from here
    result = runner.invoke(
        APP, ["gate", str(cand), "--config", str(tmp_path / "ci" / "gates.toml"), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert rows and all(r["status"] == "pass" and r["baseline"] > 0 for r in rows)
    shutil.rmtree(tmp_path / "ci" / "runs")
    result = runner.invoke(APP, ["gate", str(cand), "--config", str(tmp_path / "ci" / "gates.toml")])
    assert result.exit_code == 2 and str(tmp_path / "ci" / "runs" / "base") in result.output.replace("\n", "")
