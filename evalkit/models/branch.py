"""Many queries on one trunk: the trunk's KV cache computed once, the suffixes run as one batch on it.

Requests that share a trunk (a haystack) and differ in a suffix (question and answer) are packed:
the suffixes of a pack are laid side by side after the trunk in ONE sequence of batch 1, with a 4D
mask in which each suffix token sees the whole trunk and the earlier tokens of its own suffix only,
and position ids that restart at the trunk's end for every suffix. To every query this is exactly
the causal row it has in an independent pass (same keys, same positions), so

- the trunk's cache is held once, never expanded or copied per query (a padded batch of B rows
  would concatenate B copies of it in every layer), and no token is padded;
- variants whose n is the number of keys a query sees (SSMax) read n = trunk + i + 1 from the
  mask, and those that count positions read it from the position ids, as in an independent pass.

Greedy generation packs the prompts' suffixes likewise, then decodes every unfinished row in one
call per step: each new token is appended to the cache and sees the trunk and its own row only.
A row stops at its end-of-sequence token or its budget; the others go on.
"""

from __future__ import annotations

import numpy as np

from evalkit.core.requests import AnswerScoreRequest, GenerateRequest
from evalkit.models.body import decoder_body
from evalkit.models.prefix import common_prefix, shared_sequence


def trunk_length(requests: list) -> int:
    """Tokens every request shares, short of the last prompt token of the shortest prompt (its
    hidden state predicts what follows, so it belongs to each suffix)."""
    sequences = [shared_sequence(r) for r in requests]
    shared = min(common_prefix(sequences[0], s) for s in sequences)
    return max(0, min(shared, min(len(r.prompt) for r in requests) - 1))


def suffix_tokens(request, trunk: int) -> np.ndarray:
    """What runs after the trunk: prompt and answer but its last token (scoring), or the prompt."""
    if isinstance(request, AnswerScoreRequest):
        return np.concatenate([request.prompt, request.answer[:-1]])[trunk:]
    return request.prompt[trunk:]


def packs(requests: list, trunk: int, pack_tokens: int) -> list[list[int]]:
    """Indices of requests in packs of at most ``pack_tokens`` new cache entries (one or more requests)."""
    out, current, size = [], [], 0
    for i, request in enumerate(requests):
        tokens = len(suffix_tokens(request, trunk)) + getattr(request, "max_new_tokens", 0)
        if current and size + tokens > pack_tokens:
            out.append(current)
            current, size = [], 0
        current.append(i)
        size += tokens
    return out + [current] if current else out


def pack_tokens_for(requests: list, trunk: int, batch_tokens: int) -> int:
    """Suffix tokens one pack may hold: the trunk and the pack together no more tokens than a runner
    batch holds at this length (batch_tokens // L sequences of L tokens), so a pack needs no more
    memory than the batched pass it replaces; one request at least."""
    longest = max(r.length + getattr(r, "max_new_tokens", 0) for r in requests)
    per_batch = max(1, batch_tokens // longest)
    return max(per_batch * longest - trunk, longest - trunk)


class _PackedCache:
    """A batch-1 KV cache holding the trunk and then packed rows; knows which columns each row owns."""

    def __init__(self, adapter, trunk_ids: np.ndarray):
        import torch
        from transformers import DynamicCache

        self.adapter, self.device = adapter, adapter.device
        self.cache = DynamicCache(config=adapter.model.config)
        self.trunk = len(trunk_ids)
        self.eager = adapter.model.config._attn_implementation == "eager"  # eager adds the mask: it wants a float bias
        if self.trunk:
            ids = torch.from_numpy(np.ascontiguousarray(trunk_ids)).to(self.device)[None]  # (1, t)
            self.body()(input_ids=ids, use_cache=True, **{adapter._cache_kwarg(): self.cache})

    def body(self):
        return decoder_body(self.adapter.model)

    def run(self, ids: np.ndarray, positions: np.ndarray, owners: np.ndarray, columns: list[np.ndarray]):
        """Hidden states (1, Q, D) of tokens ``ids`` appended to the cache at ``positions``: token q sees
        the trunk, the cache columns ``columns[owners[q]]`` (its row's earlier tokens) and the tokens of
        this call of its own row up to itself."""
        import torch

        q, past = len(ids), self.cache.get_seq_length()
        allowed = np.zeros((q, past + q), dtype=bool)  # (Q, K)
        allowed[:, : self.trunk] = True
        for row in np.unique(owners):
            mine = np.flatnonzero(owners == row)
            allowed[np.ix_(mine, columns[row])] = True
            allowed[np.ix_(mine, past + mine)] = np.tril(np.ones((len(mine), len(mine)), dtype=bool))
        mask = torch.from_numpy(allowed).to(self.device)[None, None]  # (1, 1, Q, K)
        if self.eager:
            dtype = self.adapter.model.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=self.device).masked_fill(~mask, torch.finfo(dtype).min)
        out = self.body()(
            input_ids=torch.from_numpy(np.ascontiguousarray(ids)).to(self.device)[None],
            position_ids=torch.from_numpy(np.ascontiguousarray(positions)).to(self.device)[None],
            attention_mask=mask,
            use_cache=True,
            **{self.adapter._cache_kwarg(): self.cache},
        )
        return out.last_hidden_state, past  # (1, Q, D), where this call's columns start

    def cut_to_trunk(self) -> None:
        extra = self.cache.get_seq_length() - self.trunk
        if extra > 0:
            self.cache.crop(-extra)


def answer_branched(adapter, requests: list, batch_tokens: int) -> list:
    """Answers to ``requests`` (one kind) on one trunk cache, their suffixes packed in batches."""
    import torch

    trunk = trunk_length(requests)
    with torch.inference_mode():
        cache = _PackedCache(adapter, shared_sequence(requests[0])[:trunk])
        answers: list = [None] * len(requests)
        step = _score_pack if isinstance(requests[0], AnswerScoreRequest) else _generate_pack
        for pack in packs(requests, trunk, pack_tokens_for(requests, trunk, batch_tokens)):
            for i, answer in zip(pack, step(adapter, cache, [requests[i] for i in pack])):
                answers[i] = answer
            cache.cut_to_trunk()
    return answers


def _lay_out(suffixes: list[np.ndarray], trunk: int):
    """Packed ids, their position ids and the row owning each token; and each row's offsets in the pack."""
    sizes = np.array([len(s) for s in suffixes])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    owners = np.repeat(np.arange(len(suffixes)), sizes)  # (Q,)
    positions = trunk + np.arange(sizes.sum()) - starts[owners]  # each suffix continues from the trunk's end
    return np.concatenate(suffixes), positions, owners, starts


def _score_pack(adapter, cache: _PackedCache, requests: list[AnswerScoreRequest]) -> list:
    import torch

    t = cache.trunk
    suffixes = [suffix_tokens(r, t) for r in requests]
    ids, positions, owners, starts = _lay_out(suffixes, t)
    no_columns = [np.zeros(0, dtype=np.int64)] * len(requests)
    hidden, _ = cache.run(ids, positions, owners, no_columns)  # (1, Q, D)
    out = []
    for request, start in zip(requests, starts):
        p, a = len(request.prompt), len(request.answer)
        first = start + p - 1 - t  # the hidden state that predicts the first answer token
        gold = torch.from_numpy(request.answer).to(adapter.device)[None]  # (1, A)
        out.append(adapter._answer_scores(hidden[:, first : first + a], gold)[0])
    return out


def _generate_pack(adapter, cache: _PackedCache, requests: list[GenerateRequest]) -> list[np.ndarray]:
    t = cache.trunk
    suffixes = [suffix_tokens(r, t) for r in requests]
    ids, positions, owners, starts = _lay_out(suffixes, t)
    hidden, past = cache.run(ids, positions, owners, [np.zeros(0, dtype=np.int64)] * len(requests))
    last = starts + np.array([len(s) for s in suffixes]) - 1  # each row's last prompt token
    columns = [past + np.arange(s, s + len(x)) for s, x in zip(starts, suffixes)]  # the cache columns each row owns
    eos = adapter.eos_ids()
    new: list[list[int]] = [[] for _ in requests]
    rows = np.arange(len(requests))
    tokens = adapter.logits(hidden[0, last]).argmax(-1).cpu().numpy()  # (B,) first new token of each row
    while True:
        going = []
        for row, token in zip(rows, tokens):
            if int(token) in eos:
                continue  # a row ends at its end-of-sequence token, which is not part of the answer
            new[row].append(int(token))
            if len(new[row]) < requests[row].max_new_tokens:
                going.append(row)
        if not going:
            return [np.asarray(n, dtype=np.int64) for n in new]
        rows = np.array(going)
        step_ids = np.array([new[r][-1] for r in rows])
        step_positions = np.array([t + len(suffixes[r]) + len(new[r]) - 1 for r in rows])
        hidden, past = cache.run(step_ids, step_positions, np.arange(len(rows)), [columns[r] for r in rows])
        for k, r in enumerate(rows):
            columns[r] = np.append(columns[r], past + k)
        tokens = adapter.logits(hidden[0]).argmax(-1).cpu().numpy()  # (rows,)
