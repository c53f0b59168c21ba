"""The model adapter: batched primitives on a loaded causal LM.

It knows nothing of tasks. Each primitive takes a list of typed requests of equal length (the
runner buckets them) and returns one numpy result per request.
"""

from __future__ import annotations

import numpy as np

from evalkit.models.loading import LoadedModel
from evalkit.models.requests import TokenLossRequest

# Bytes of float32 logits materialized at once; the LM head and loss run in chunks of
# rows so that a 64k-token sequence never holds a (64k x vocab) logits tensor.
DEFAULT_LOGITS_BUDGET = {"cpu": 256 << 20, "cuda": 1 << 30}


class ModelAdapter:
    def __init__(self, loaded: LoadedModel, logits_budget_bytes: int | None = None):
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        vocab = self.model.get_output_embeddings().weight.shape[0]
        budget = logits_budget_bytes or DEFAULT_LOGITS_BUDGET.get(self.device.type, 1 << 30)
        self.head_chunk_tokens = max(1, budget // (vocab * 4))

    # -- dispatch -------------------------------------------------------------------------
    def answer(self, requests: list) -> list:
        kinds = {type(r) for r in requests}
        if kinds == {TokenLossRequest}:
            return self.token_losses(requests)
        raise TypeError(f"unsupported request mix: {sorted(k.__name__ for k in kinds)}")

    # -- token losses ---------------------------------------------------------------------
    def token_losses(self, requests: list[TokenLossRequest]) -> list[np.ndarray]:
        """Per-token NLL of each sequence: result i has shape (T-1,), float32."""
        import torch

        lengths = {r.length for r in requests}
        assert len(lengths) == 1, "the runner batches requests of one length only"
        ids = torch.from_numpy(np.stack([r.tokens for r in requests]))  # (B, T)
        if self.device.type == "cuda":
            ids = ids.pin_memory()
        ids = ids.to(self.device, non_blocking=True)
        with torch.inference_mode():
            nll = self.sequence_nll(ids)  # (B, T-1)
        out = nll.float().cpu().numpy()  # the only host-device sync of the batch
        return [row for row in out]

    def sequence_nll(self, ids):
        """NLL of ids[:, 1:] given the prefix; the LM head runs in row chunks."""
        import torch
        import torch.nn.functional as F

        body = self.model.get_decoder()
        hidden = body(input_ids=ids, use_cache=False).last_hidden_state  # (B, T, D)
        batch, length, width = hidden.shape
        hidden = hidden[:, :-1].reshape(-1, width)  # (B*(T-1), D)
        targets = ids[:, 1:].reshape(-1)  # (B*(T-1),)
        nll = torch.empty(targets.shape[0], dtype=torch.float32, device=ids.device)
        for start in range(0, targets.shape[0], self.head_chunk_tokens):
            stop = start + self.head_chunk_tokens
            logits = self.logits(hidden[start:stop])  # (chunk, V) float32
            nll[start:stop] = F.cross_entropy(logits, targets[start:stop], reduction="none")
        return nll.view(batch, length - 1)  # (B, T-1)

    def logits(self, hidden):
        """LM head on hidden states, in float32, with the model's own final logit transforms."""
        import torch

        config = self.model.config
        logits = self.model.get_output_embeddings()(hidden).float()  # (N, V)
        scaling = getattr(config, "logits_scaling", None)  # Granite divides logits by it
        if scaling:
            logits = logits / scaling
        cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2 caps logits
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits
