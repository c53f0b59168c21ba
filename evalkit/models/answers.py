"""Answer scores from the logits that predict each answer token: one computation for every backend
that holds logits (transformers, plain torch modules), so greedy and rank mean the same everywhere."""

from __future__ import annotations

from evalkit.core.requests import AnswerScore


def answer_scores(logits, gold) -> list[AnswerScore]:
    """logits (B, A, V) float32 predicting gold (B, A): per-token log-probs, whether greedy decoding
    yields the whole answer, and the first answer token's rank."""
    import torch

    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, gold[..., None]).squeeze(-1)  # (B, A)
    gold_logit = logits.gather(-1, gold[..., None])  # (B, A, 1)
    greedy = (logits.argmax(-1) == gold).all(-1)  # (B,)
    # strictly greater logits count against the gold token: ties do not lower its rank
    rank = (logits[:, 0] > gold_logit[:, 0]).sum(-1) + 1  # (B,)
    logprobs, greedy, rank = logprobs.cpu().numpy(), greedy.cpu().numpy(), rank.cpu().numpy()
    return [AnswerScore(logprobs[i], bool(greedy[i]), int(rank[i])) for i in range(len(gold))]


def until_eos(new, eos_ids: set[int]):
    """Generated ids up to (not including) the first end-of-sequence id."""
    import numpy as np

    stop = np.flatnonzero(np.isin(new, list(eos_ids)))
    return new[: stop[0]] if len(stop) else new
