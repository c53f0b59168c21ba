"""Teacher-forced answer scoring and greedy generation against naive references."""

from __future__ import annotations

import numpy as np
import torch

from evalkit.core.requests import AnswerScoreRequest, GenerateRequest
from tests.conftest import make_llama
from tests.test_token_losses import adapter_for


def naive_logits(model, ids: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids)[None]).logits[0].double()  # (T, V)


def test_answer_logprobs_and_rank_match_naive():
    model = make_llama(vocab_size=97)
    rng = np.random.default_rng(0)
    requests = [AnswerScoreRequest(rng.integers(0, 97, 40), rng.integers(0, 97, 4)) for _ in range(3)]
    scores = adapter_for(model, 8).score_answers(requests)
    for request, score in zip(requests, scores):
        full = np.concatenate([request.prompt, request.answer])
        logp = torch.log_softmax(naive_logits(model, full), -1)  # (T, V)
        positions = np.arange(39, 43)
        want = logp[positions, torch.from_numpy(request.answer)].numpy()
        np.testing.assert_allclose(score.token_logprobs, want, atol=1e-5)
        order = torch.argsort(logp[39], descending=True).tolist()
        assert score.first_token_rank == order.index(int(request.answer[0])) + 1


def test_greedy_correct_is_exactly_whether_greedy_decoding_produces_the_answer():
    model = make_llama(vocab_size=97, seed=5)
    adapter = adapter_for(model, 64)
    prompts = [np.random.default_rng(k).integers(0, 97, 30) for k in range(3)]
    generated = adapter.generate([GenerateRequest(p, 5) for p in prompts])
    # the model's own greedy continuation is greedy-correct ...
    own = adapter.score_answers([AnswerScoreRequest(p, g[:5]) for p, g in zip(prompts, generated)])
    assert all(s.greedy_correct and s.first_token_rank == 1 for s in own)
    # ... and changing its last token makes it wrong
    wrong = [np.concatenate([g[:4], [(g[4] + 1) % 97]]) for g in generated]
    assert not any(
        s.greedy_correct for s in adapter.score_answers([AnswerScoreRequest(p, w) for p, w in zip(prompts, wrong)])
    )


def test_generate_matches_transformers_generate_one_at_a_time():
    model = make_llama(vocab_size=97, seed=6)
    adapter = adapter_for(model, 64)
    prompts = [np.random.default_rng(10 + k).integers(1, 97, 25) for k in range(2)]
    batched = adapter.generate([GenerateRequest(p, 6) for p in prompts])
    for prompt, got in zip(prompts, batched):
        ids = torch.from_numpy(prompt)[None]
        with torch.no_grad():
            want = model.generate(input_ids=ids, do_sample=False, max_new_tokens=6, pad_token_id=0)[0, 25:].numpy()
        stop = np.flatnonzero(want == 0)
        want = want[: stop[0]] if len(stop) else want
        np.testing.assert_array_equal(got, want)
