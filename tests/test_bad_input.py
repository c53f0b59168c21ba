"""Every bad input: exit code 2 and one line naming the problem (and nothing lost)."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

import cli
from evalkit.core.errors import ResultsError
from evalkit.store.results import RunStore

runner = CliRunner()
APP = cli.register_tasks()


def run_ppl(model, out, *extra):
    args = [
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
        *map(str, extra),
    ]
    return runner.invoke(APP, args)


def assert_user_error(result, *words):
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split()).lower()
    for word in words:
        assert word.lower() in text, (word, result.output)


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_path(tmp_path):
    assert_user_error(run_ppl(tmp_path / "nope", tmp_path / "o"), "not found")


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    assert_user_error(run_ppl(tmp_path / "empty", tmp_path / "o"), "is not a model")


def test_corrupt_safetensors(tiny_checkpoint, tmp_path):
    ckpt = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert_user_error(run_ppl(ckpt, tmp_path / "o"), "corrupt safetensors")


def test_corrupt_config(tiny_checkpoint, tmp_path):
    ckpt = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    (ckpt / "config.json").write_text("{not json")
    assert_user_error(run_ppl(ckpt, tmp_path / "o"), "config.json is not valid json")


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    assert_user_error(run_ppl(bad, tmp_path / "o"), "cannot load gguf")


def pickle_checkpoint(tiny_checkpoint, folder):
    from transformers import AutoModelForCausalLM

    ckpt = copy_checkpoint(tiny_checkpoint, folder)
    (ckpt / "model.safetensors").unlink()
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    torch.save(model.state_dict(), ckpt / "pytorch_model.bin")
    return ckpt


def test_pickle_checkpoint_refused_unless_allowed(tiny_checkpoint, tmp_path):
    from evalkit.models.loading import LoadOptions, _check_hf_folder

    ckpt = pickle_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    assert_user_error(run_ppl(ckpt, tmp_path / "o1"), "pickle", "--allow-pickle")
    assert _check_hf_folder(ckpt, LoadOptions(allow_pickle=True))["model_type"] == "llama"  # allowed: it loads on


@pytest.mark.slow
def test_pickle_checkpoint_runs_when_allowed(tiny_checkpoint, tmp_path):
    """A whole run on pickle weights with --allow-pickle (minutes on a loaded CPU). Fast check:
    test_pickle_checkpoint_refused_unless_allowed (the refusal, and that the flag passes the check)."""
    ckpt = pickle_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    assert run_ppl(ckpt, tmp_path / "o2", "--allow-pickle").exit_code == 0


def test_remote_code_refused(tiny_checkpoint, tmp_path):
    ckpt = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (ckpt / "config.json").write_text(json.dumps(config))
    assert_user_error(run_ppl(ckpt, tmp_path / "o"), "own python modelling code", "--trust-remote-code")


def test_unknown_task(tmp_path):
    result = runner.invoke(APP, ["run", "perplexty"])
    assert result.exit_code == 2 and "perplexty" in result.output


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--bins", "cubic"], ["--bins", "log, linear"]),
        (["--lengths", "4q"], ["bad context length", "4k"]),
        (["--samples", "0"], ["--samples"]),
        (["--attention", "sofmax"], ["unknown attention variant"]),
        (["--device", "tpu"], ["bad device"]),
    ],
)
def test_bad_option_values(tiny_checkpoint, tmp_path, extra, words):
    assert_user_error(run_ppl(tiny_checkpoint, tmp_path / "o", *extra), *words)


def test_length_above_max_positions(tiny_checkpoint, tmp_path):
    # the tiny model has max_position_embeddings = 512
    result = run_ppl(tiny_checkpoint, tmp_path / "o1", "--lengths", "1k")
    assert_user_error(result, "exceeds the model's max_position_embeddings (512)", "--allow-extrapolation")
    assert run_ppl(tiny_checkpoint, tmp_path / "o2", "--lengths", "1k", "--allow-extrapolation").exit_code == 0


def test_corpus_shorter_than_length(tiny_checkpoint, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    assert_user_error(run_ppl(tiny_checkpoint, tmp_path / "o", "--dataset", short), "fewer than the context length")


def test_dataset_field_missing(tiny_checkpoint, tmp_path):
    data = tmp_path / "books.jsonl"
    data.write_text(json.dumps({"body": "x " * 500}) + "\n")
    assert_user_error(run_ppl(tiny_checkpoint, tmp_path / "o", "--dataset", data), "no field 'text'", "--text-field")
    assert run_ppl(tiny_checkpoint, tmp_path / "o2", "--dataset", data, "--text-field", "body").exit_code == 0


def test_out_folder_with_a_different_run(tiny_checkpoint, tmp_path):
    out = tmp_path / "o"
    assert run_ppl(tiny_checkpoint, out).exit_code == 0
    assert_user_error(run_ppl(tiny_checkpoint, out), "already holds a run", "--resume")
    assert_user_error(run_ppl(tiny_checkpoint, out, "--resume", "--bins", "linear"), "holds a different run")
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    assert_user_error(run_ppl(tiny_checkpoint, other), "not an evalkit run folder")
    assert (other / "thesis.tex").read_text() == "precious"


def test_disk_full_is_a_clear_error(tmp_path, monkeypatch):
    store = RunStore(tmp_path / "run", {"task": "t"}, resume=False)
    store.write_manifest({})
    store.append("softmax", "a", [{"metric": "m", "value": 1.0}])

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fsync", full)
    with pytest.raises(ResultsError, match="disk full.*--resume"):
        store.append("softmax", "b", [{"metric": "m", "value": 2.0}])
    store.close()
    again = RunStore(tmp_path / "run", {"task": "t"}, resume=True)
    assert again.is_done("softmax", "a")


@pytest.mark.parametrize("value", ["-0.4", "0", "0.3,-1", "nan"])
def test_non_positive_ssmax_s_is_rejected(value):
    from evalkit.core.errors import ConfigError
    from evalkit.run.calibration import parse_values

    with pytest.raises(ConfigError, match="ssmax-s"):
        parse_values("--ssmax-s", value)
