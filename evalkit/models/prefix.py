"""Prefix sharing: answer requests whose prompts start alike are scored on one KV cache.

Needle prompts of one trial read the same haystack up to the needle (``draw="trial"``), so a
grid of depths x lengths repeats most of its prefill. Sorted lexicographically, sequences that
share a prefix sit next to each other, and for a < b < c the prefix a and c share is also
shared by b. So one cache walked along the sorted order, cut back to the prefix the next
sequence has in common with the current one and extended from there, computes every distinct
prefix exactly once: the work is the size of the token trie of the requests, not their sum.

Answer scoring shares prompt + answer; greedy generation shares the prompt, and decodes on the
cache too. This module only plans (numpy, no torch); ``TransformersBackend.answer_shared`` runs the plan.
"""

from __future__ import annotations

import numpy as np

from evalkit.core.requests import AnswerScoreRequest, GenerateRequest

# A run of requests is scored on a shared cache when consecutive ones have this much in common;
# below it the batched path wins (equal-length batches, no cache copies). A guess, not measured on GPU.
MIN_SHARED_TOKENS = 64
MIN_SHARED_FRACTION = 0.25


def shared_sequence(request) -> np.ndarray | None:
    """The tokens a request could share with others, or None for kinds that share nothing."""
    if isinstance(request, AnswerScoreRequest):
        return np.concatenate([request.prompt, request.answer])
    if isinstance(request, GenerateRequest):
        return request.prompt
    return None


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Number of leading tokens ``a`` and ``b`` have in common."""
    m = min(len(a), len(b))
    differ = np.flatnonzero(a[:m] != b[:m])
    return int(differ[0]) if len(differ) else m


def walk_plan(requests: list) -> list[tuple[object, int, int]]:
    """(request, tokens it shares in, tokens it keeps from the one before) for requests in walk
    order: what ``TransformersBackend.answer_shared`` computes for each (at least the last prompt token
    runs, as its hidden state predicts what follows)."""
    plan, previous = [], None
    for request in requests:
        sequence = shared_sequence(request)
        keep = 0 if previous is None else min(common_prefix(previous, sequence), len(request.prompt) - 1)
        plan.append((request, len(sequence), keep))
        previous = sequence
    return plan


def lexicographic_order(sequences: list[np.ndarray]) -> list[int]:
    # big-endian bytes of non-negative ids compare as the id sequences do
    return sorted(range(len(sequences)), key=lambda i: np.asarray(sequences[i], ">i8").tobytes())


def shared_runs(sequences: list[np.ndarray]) -> tuple[list[list[int]], list[int]]:
    """(runs, alone): runs of indices in lexicographic order where neighbours share enough tokens
    to be worth one cache, and the indices that share too little with anything."""
    order = lexicographic_order(sequences)
    runs: list[list[int]] = []
    current = order[:1]
    for previous, index in zip(order, order[1:]):
        shared = common_prefix(sequences[previous], sequences[index])
        shorter = min(len(sequences[previous]), len(sequences[index]))
        if shared >= MIN_SHARED_TOKENS and shared >= MIN_SHARED_FRACTION * shorter:
            current.append(index)
        else:
            runs.append(current)
            current = [index]
    if current:
        runs.append(current)
    return [r for r in runs if len(r) > 1], [r[0] for r in runs if len(r) == 1]


def tokens_to_compute(sequences: list[np.ndarray]) -> tuple[int, int]:
    """(with sharing, without): forward tokens a shared walk and independent passes need."""
    order = lexicographic_order(sequences)
    shared = sum(common_prefix(sequences[a], sequences[b]) for a, b in zip(order, order[1:]))
    total = sum(len(s) for s in sequences)
    return total - shared, total
