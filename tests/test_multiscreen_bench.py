"""``evalkit bench screening``: the table's shape and settings (no timing assertions)."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

import cli
from evalkit.bench.screening import bench_screening, screening_model, softmax_transformer


def test_models_match_in_width_and_depth_and_the_infinite_share_is_the_setting():
    screen = screening_model(8, vocab=64, share=0.094)
    assert screen.infinite_share() == 6 / 64  # round(0.094 x 64) tiles, spread over the layers
    assert max(len(screen.infinite(layer)) for layer in range(8)) == 1
    softmax = softmax_transformer(64, 8, 64)
    assert len(softmax.blocks) == len(screen.layers) == 8 and softmax.embed.weight.shape[1] == screen.config.width
    ids = torch.randint(0, 64, (1, 40))
    assert softmax(ids).shape == screen(ids).shape == (1, 40, 64)


def test_bench_rows_per_length_with_ratios(tmp_path):
    frame = bench_screening("128,256", device="cpu", psi=2, infinite_share=0.25, vocab=32, out=str(tmp_path))
    assert list(frame.context_length) == [128, 256]
    assert (frame.softmax_over_screening > 0).all() and (frame.infinite_share == 0.25).all()
    assert (frame.softmax_over_screening_cpu > 0).all()
    assert (tmp_path / "bench_screening.csv").is_file()
    assert "of tiles at w = infinity" in frame.attrs["caption"]


def test_cli_parses_and_refuses_a_bad_share():
    result = CliRunner().invoke(cli.register_tasks(), ["bench", "screening", "--infinite-share", "1.5", "--psi", "2"])
    assert result.exit_code == 2 and "infinite-share" in result.output
