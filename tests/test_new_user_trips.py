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
        result = runner.invoke(
            APP,
            [
                "run",
                "needle",
                "--model",
                str(tiny_checkpoint),
                "--lengths",
                "96,128",
                "--depths",
                "0,100",
                "--trials",
                "1",
                "--threshold",
                threshold,
                "--out",
                str(tmp_path / f"run{len(threshold)}"),
                "--device",
                "cpu",
            ],
            env={"COLUMNS": "200"},
        )
        assert result.exit_code == 0, result.output
        assert "threshold" in result.output and not re.search(r"\bnan\b", result.output, re.IGNORECASE)


def test_relative_gate_table_shows_its_threshold(tiny_checkpoint, tmp_path):
    runs = {}
    for name, seed in (("base", "1234"), ("cand", "1234"), ("other", "7")):
        runs[name] = tmp_path / name
        result = runner.invoke(
            APP,
            [
                "run",
                "perplexity",
                "--model",
                str(tiny_checkpoint),
                "--lengths",
                "64",
                "--samples",
                "2",
                "--seed",
                seed,
                "--out",
                str(runs[name]),
                "--device",
                "cpu",
                "--quiet",
            ],
        )
        assert result.exit_code == 0, result.output
    gates = tmp_path / "gates.toml"
    gates.write_text(
        f'baseline = "{runs["base"]}"\n[[gate]]\ntask = "perplexity"\nmetric = "perplexity"\n'
        'op = "<="\nbaseline_factor = 1.02\n'
    )
    from evalkit.report.gate import check_gates, load_gates

    threshold = check_gates(runs["cand"], load_gates(gates)).rows.threshold.iloc[0]
    for name in ("cand", "other"):  # "other": a failing (baseline comparable) row without a threshold
        result = runner.invoke(APP, ["gate", "--config", str(gates), str(runs[name])], env={"COLUMNS": "200"})
        assert f"{threshold:.5g}" in result.output and not re.search(r"\bnan\b", result.output, re.IGNORECASE)


def _run_ppl(model, out, dataset):
    return runner.invoke(
        APP,
        [
            "run",
            "perplexity",
            "--model",
            str(model),
            "--lengths",
            "64",
            "--samples",
            "1",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
            "--dataset",
            str(dataset),
        ],
    )


def test_binary_file_as_text_dataset_is_refused(tiny_checkpoint, tmp_path):
    import numpy as np

    from evalkit.core.errors import DataError
    from evalkit.data.corpus import load_corpus

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
    from evalkit.run.progress import ProgressReporter

    labels = []
    original = ProgressReporter.advance

    def record(self, samples, tokens, seconds, label, cost=None):
        labels.append(label)
        return original(self, samples, tokens, seconds, label, cost)

    monkeypatch.setattr(ProgressReporter, "advance", record)
    for cache in ("--prefix-cache", "--no-prefix-cache"):
        result = runner.invoke(
            APP,
            [
                "run",
                "needle",
                "--model",
                str(tiny_checkpoint),
                "--lengths",
                "96,128",
                "--depths",
                "0,100",
                "--trials",
                "1",
                "--out",
                str(tmp_path / cache),
                "--device",
                "cpu",
                cache,
            ],
        )
        assert result.exit_code == 0, result.output
    lengths = {
        int(part) for label in labels for word in label.split() if word.startswith("L=") for part in word[2:].split(",")
    }
    assert lengths == {96, 128}, labels


def _write_tiny_gguf(path, tokenizer):
    """A 2-layer Llama GGUF (F32 tensors, the tokenizer's BPE vocabulary and merges), as llama.cpp writes one."""
    import json

    import gguf
    import numpy as np

    data = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [t for t, _ in sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    vocab, hidden, inter, heads, kv = len(tokens), 64, 128, 4, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(512)
    writer.add_embedding_length(hidden)
    writer.add_block_count(2)
    writer.add_feed_forward_length(inter)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * vocab)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    rng = np.random.default_rng(0)
    shapes = {"token_embd": (vocab, hidden), "output": (vocab, hidden), "output_norm": (hidden,)}
    for i in range(2):
        shapes.update(
            {
                f"blk.{i}.attn_q": (hidden, hidden),
                f"blk.{i}.attn_k": (kv * hidden // heads, hidden),
                f"blk.{i}.attn_v": (kv * hidden // heads, hidden),
                f"blk.{i}.attn_output": (hidden, hidden),
                f"blk.{i}.ffn_gate": (inter, hidden),
                f"blk.{i}.ffn_up": (inter, hidden),
                f"blk.{i}.ffn_down": (hidden, inter),
                f"blk.{i}.attn_norm": (hidden,),
                f"blk.{i}.ffn_norm": (hidden,),
            }
        )
    for name, shape in shapes.items():
        weight = np.ones(shape) if len(shape) == 1 else rng.standard_normal(shape) * 0.02
        writer.add_tensor(f"{name}.weight", weight.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_load_draws_no_progress_bar_per_tensor(tokenizer, tmp_path, capfd):
    # transformers' de-quantization bar is tqdm's own: in a log it wrote one line per tensor
    model = tmp_path / "tiny.gguf"
    _write_tiny_gguf(model, tokenizer)
    result = runner.invoke(
        APP,
        [
            "run",
            "perplexity",
            "--model",
            str(model),
            "--lengths",
            "64",
            "--samples",
            "1",
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    captured = capfd.readouterr()
    for text in (result.output, captured.out, captured.err):
        assert "GGUF tensors" not in text and "it/s" not in text, text
