"""Typed requests a task sends to a model adapter, and what comes back.

A task never touches torch: it builds these requests from token ids (numpy arrays), and the
adapter answers with numpy arrays. Requests of one kind and one length are batched together by
the runner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenLossRequest:
    """Score a whole sequence: the answer is the NLL (nats) of ``tokens[1:]``, shape (T-1,)."""

    tokens: np.ndarray  # (T,) int64

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def shape(self) -> tuple:
        """Requests of equal shape batch together without padding."""
        return (self.length,)

    @property
    def positions(self) -> int:
        """Positions the model runs on: checked against its position limit."""
        return self.length


@dataclass(frozen=True)
class AnswerScoreRequest:
    """Teacher-forced scoring of a gold answer after a prompt, in one forward pass."""

    prompt: np.ndarray  # (P,) int64
    answer: np.ndarray  # (A,) int64

    @property
    def length(self) -> int:
        return int(self.prompt.shape[0] + self.answer.shape[0])

    @property
    def shape(self) -> tuple:
        return (len(self.prompt), len(self.answer))

    @property
    def positions(self) -> int:
        """prompt + answer - 1: the last answer token is predicted, never fed (as in generation)."""
        return int(self.prompt.shape[0] + self.answer.shape[0] - 1)


@dataclass(frozen=True)
class AnswerScore:
    token_logprobs: np.ndarray  # (A,) log p(answer_t | prompt, answer_<t)
    greedy_correct: bool  # every answer token is the argmax given the gold prefix = greedy decoding yields it
    first_token_rank: int  # 1 = the first answer token is the model's top choice

    @property
    def logprob(self) -> float:
        return float(self.token_logprobs.sum())

    @property
    def mean_logprob(self) -> float:
        return float(self.token_logprobs.mean())


@dataclass(frozen=True)
class GenerateRequest:
    """Greedy generation with the KV cache after a prompt."""

    prompt: np.ndarray  # (P,) int64
    max_new_tokens: int

    @property
    def length(self) -> int:
        return int(self.prompt.shape[0])

    @property
    def shape(self) -> tuple:
        return (self.length, self.max_new_tokens)

    @property
    def positions(self) -> int:
        """The last generated token is never fed back: prompt + max_new_tokens - 1."""
        return self.length + self.max_new_tokens - 1


@dataclass(frozen=True)
class ProbeRequest:
    """Exact attention statistics of chosen query rows, for every layer and head.

    The model runs on ``tokens``; for each row in ``rows`` the weights over all keys are formed
    (rows x n per head, never n x n) and reduced against the key span ``needle``.
    """

    tokens: np.ndarray  # (T,) int64
    rows: tuple[int, ...]  # query positions to probe
    needle: tuple[int, int]  # [start, end) key span whose attention mass is measured
    layers: tuple[int, ...] | None = None  # None: every layer

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def shape(self) -> tuple:
        return (self.length, self.rows, self.layers)

    @property
    def positions(self) -> int:
        return self.length


PROBE_METRICS = ("needle_mass", "max_weight", "entropy", "entropy_norm", "needle_rank", "top1_in_needle")


@dataclass(frozen=True)
class ProbeResult:
    """Each metric as a (layers, heads) array, averaged over the probed rows."""

    layers: tuple[int, ...]  # the layer index of each first-axis entry
    metrics: dict  # name -> np.ndarray (layers, heads)
