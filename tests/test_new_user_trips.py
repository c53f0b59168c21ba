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


def _run_ppl(model, out, dataset):
    return runner.invoke(APP, ["run", "perplexity", "--model", str(model), "--lengths", "64", "--samples", "1",
                               "--out", str(out), "--device", "cpu", "--quiet", "--dataset", str(dataset)])


def test_binary_file_as_text_dataset_is_refused(tiny_checkpoint, tmp_path):
    import numpy as np

    from evalkit.data.corpus import load_corpus
    from evalkit.errors import DataError

    weights = tmp_path / "weights.txt"  # a checkpoint renamed: NUL bytes
    weights.write_bytes(np.random.default_rng(0).standard_normal(4096).astype(np.float32).tobytes())
    archive = tmp_path / "notes.txt"  # compressed data without a NUL byte: mostly not UTF-8
    archive.write_bytes(bytes(range(128, 256)) * 64)
    for file, words in ((weights, "binary file"), (archive, "not utf-8 text")):
        result = _run_ppl(tiny_checkpoint, tmp_path / f"o-{file.stem}", file)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and words in lines[0].lower() and str(file.name) in lines[0], result.output
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_bytes(weights.read_bytes())
    try:
        load_corpus(str(jsonl))
    except DataError as error:
        assert "binary" in str(error)
    else:
        raise AssertionError("a binary .jsonl was read")
    # real text with a stray Latin-1 byte still reads, the byte as U+FFFD
    text = tmp_path / "latin.txt"
    text.write_bytes(("word " * 2000).encode() + b"caf\xe9 " + ("more " * 2000).encode())
    assert "caf\ufffd" in load_corpus(str(text)).documents[0]


def test_progress_label_is_the_grid_length(tiny_checkpoint, tmp_path, monkeypatch):
    # a needle prompt of L tokens is scored on L + answer tokens; the label names the grid's L
    from evalkit.progress import ProgressReporter

    labels = []
    original = ProgressReporter.advance

    def record(self, samples, tokens, seconds, label, cost=None):
        labels.append(label)
        return original(self, samples, tokens, seconds, label, cost)

    monkeypatch.setattr(ProgressReporter, "advance", record)
    for cache in ("--prefix-cache", "--no-prefix-cache"):
        result = runner.invoke(APP, ["run", "needle", "--model", str(tiny_checkpoint), "--lengths", "96,128",
                                     "--depths", "0,100", "--trials", "1", "--out", str(tmp_path / cache),
                                     "--device", "cpu", cache])
        assert result.exit_code == 0, result.output
    lengths = {int(part) for label in labels for word in label.split() if word.startswith("L=")
               for part in word[2:].split(",")}
    assert lengths == {96, 128}, labels
