"""A checkpoint folder without tokenizer files is told which files a tokenizer needs, before its weights load."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

import cli
from evalkit.core.errors import ModelLoadError
from evalkit.models.loading import load_tokenizer_only, missing_tokenizer_files

runner = CliRunner()
APP = cli.register_tasks()


def weights_only(checkpoint, folder, *keep):
    folder.mkdir()
    for name in ("config.json", "model.safetensors", *keep):
        shutil.copyfile(checkpoint / name, folder / name)
    return folder


@pytest.mark.parametrize(
    "keep, found",
    [((), "none"), (("tokenizer_config.json",), "tokenizer_config.json")],
)
def test_run_names_the_missing_tokenizer_files(tiny_checkpoint, tmp_path, monkeypatch, keep, found):
    import transformers

    folder = weights_only(tiny_checkpoint, tmp_path / "ckpt", *keep)

    def never(*args, **kwargs):
        raise AssertionError("the weights load after the tokenizer is found missing")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", never)
    args = ["run", "needle", "--model", str(folder), "--lengths", "256", "--device", "cpu", "--quiet"]
    args += ["--out", str(tmp_path / "o")]
    result = runner.invoke(APP, args)
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "Couldn't instantiate" not in line
    assert (
        f"{folder} has no tokenizer: it needs tokenizer.json, or tokenizer.model, or vocab.json and merges.txt" in line
    )
    assert f"(tokenizer files there: {found})" in line and "save_pretrained" in line


def test_missing_tokenizer_files(tmp_path, tiny_checkpoint):
    assert missing_tokenizer_files(tiny_checkpoint) is None  # tokenizer.json
    (tmp_path / "vocab.json").write_text("{}")
    assert "(vocab.json without merges.txt)" in missing_tokenizer_files(tmp_path)
    (tmp_path / "merges.txt").write_text("")
    assert missing_tokenizer_files(tmp_path) is None
    folder = weights_only(tiny_checkpoint, tmp_path / "ckpt")
    with pytest.raises(ModelLoadError, match="has no tokenizer"):
        load_tokenizer_only(str(folder), log=lambda *a: None)
