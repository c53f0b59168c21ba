"""The adapter's chunked token losses against a naive full-logits computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.backends.transformers import TransformersBackend
from evalkit.core.requests import TokenLossRequest
from evalkit.models.loading import LoadedModel, ModelSource
from tests.conftest import make_llama


def adapter_for(model, budget_tokens: int) -> TransformersBackend:
    loaded = LoadedModel(model, None, ModelSource("hf", "mem", name="tiny"), torch.device("cpu"), torch.float32, "none")
    vocab = model.config.vocab_size
    return TransformersBackend(loaded, logits_budget_bytes=budget_tokens * vocab * 4)


def naive_nll(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()  # (B, T, V): the whole thing, as a reference
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    return -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)


@pytest.mark.parametrize("chunk", [1, 7, 64, 99, 100, 1000])
def test_chunked_nll_matches_naive(chunk):
    model = make_llama(vocab_size=97)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 97, size=(3, 101))
    adapter = adapter_for(model, chunk)
    assert adapter.head_chunk_tokens == chunk
    got = np.stack(adapter.token_losses([TokenLossRequest(row) for row in ids]))
    want = naive_nll(model, torch.from_numpy(ids)).numpy()
    assert got.shape == (3, 100)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_batched_equals_one_at_a_time():
    model = make_llama(vocab_size=97)
    ids = np.random.default_rng(1).integers(0, 97, size=(4, 64))
    adapter = adapter_for(model, 50)
    together = adapter.token_losses([TokenLossRequest(row) for row in ids])
    alone = [adapter.token_losses([TokenLossRequest(row)])[0] for row in ids]
    np.testing.assert_allclose(np.stack(together), np.stack(alone), atol=1e-5, rtol=0)


def test_mean_nll_matches_hf_loss():
    """A second reference: transformers' own labels= loss is the mean of our per-token NLL."""
    model = make_llama(vocab_size=97)
    ids = torch.from_numpy(np.random.default_rng(2).integers(0, 97, size=(1, 80)))
    with torch.no_grad():
        hf_loss = model(input_ids=ids, labels=ids).loss.item()
    ours = adapter_for(model, 13).token_losses([TokenLossRequest(ids[0].numpy())])[0]
    assert abs(float(ours.mean()) - hf_loss) < 1e-5
