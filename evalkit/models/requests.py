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
