"""The transformers backend: the exact path, batched primitives on a loaded transformers causal LM.

It answers every request kind (token losses, answer scoring, generation, attention probes), applies
every attention variant through transformers' ``AttentionInterface``, walks shared prefixes on one
KV cache and branches queries off a shared trunk. It knows nothing of tasks. Each primitive takes a
list of typed requests of equal length (the runner buckets them) and returns one numpy result per
request.
"""

from __future__ import annotations

import numpy as np

from evalkit.core.backend import REQUEST_KINDS, Backend, Capabilities
from evalkit.core.requests import AnswerScore, AnswerScoreRequest, GenerateRequest, ProbeRequest, TokenLossRequest
from evalkit.models.answers import answer_scores, until_eos
from evalkit.models.body import decoder_body
from evalkit.models.loading import LoadedModel

# Bytes of float32 logits materialized at once; the LM head and loss run in chunks of
# rows so that a 64k-token sequence never holds a (64k x vocab) logits tensor.
DEFAULT_LOGITS_BUDGET = {"cpu": 256 << 20, "cuda": 1 << 30}


class TransformersBackend(Backend):
    name = "transformers"
    summary = "the exact path: every request kind and variant, attention probes, shared prefixes (transformers)"

    @classmethod
    def declared(cls) -> Capabilities:
        return Capabilities(
            requests=frozenset(REQUEST_KINDS),
            variants=None,
            native=True,
            shares_prefixes=True,
            branches=True,
        )

    @classmethod
    def load(cls, model: str, options, backend_options=None, log=print) -> TransformersBackend:
        from evalkit.models.loading import load_model

        return cls(load_model(model, options, log=log))

    @classmethod
    def wrap(cls, model, tokenizer, name: str, backend_options=None) -> TransformersBackend:
        from evalkit.models.loading import wrap_model

        return cls(wrap_model(model, tokenizer, name))

    def __init__(self, loaded: LoadedModel, logits_budget_bytes: int | None = None):
        self.loaded = loaded
        self.model = loaded.model  # this backend's own; the runner never reaches it
        self.device = loaded.device
        vocab = self.model.get_output_embeddings().weight.shape[0]
        budget = logits_budget_bytes or DEFAULT_LOGITS_BUDGET.get(self.device.type, 1 << 30)
        self.head_chunk_tokens = max(1, budget // (vocab * 4))

    # -- what the protocol reads ------------------------------------------------------------
    tokenizer = property(lambda self: self.loaded.tokenizer)
    max_positions = property(lambda self: self.loaded.max_positions)
    training_length = property(lambda self: self.loaded.training_length)
    native_attention = property(lambda self: self.loaded.native_attention)
    native_scaling = property(lambda self: self.loaded.native_scaling)
    config = property(lambda self: self.model.config)
    content_hash = property(lambda self: self.loaded.content_hash)
    hashes = property(lambda self: self.loaded.hashes)
    dtype = property(lambda self: self.loaded.dtype)

    def describe(self) -> dict:
        return {**self.loaded.describe(), "backend": self.name}

    def capabilities(self) -> Capabilities:
        return Capabilities(
            requests=frozenset(REQUEST_KINDS),
            variants=None,
            native=True,
            shares_prefixes=self.can_share_prefixes(),
            branches=self.can_branch(),
        )

    def activate(self, variant) -> None:
        from evalkit.attention import apply_attention

        apply_attention(self.model, variant.spec, params=variant.tables or None)

    def batch_tokens(self) -> int:
        """A first guess at the token budget of one batch; OOM backoff corrects it if too high."""
        import torch

        config = self.model.config
        if self.device.type != "cuda":
            return 2048  # on CPU a batch buys nothing over one sequence (measured: 306 vs 279 tok/s at 2k)
        free, _total = torch.cuda.mem_get_info(self.device)
        width = getattr(config, "hidden_size", 2048)
        inner = getattr(config, "intermediate_size", 4 * width)
        per_token = (6 * width + 3 * inner) * torch.finfo(self.loaded.dtype).bits // 8 * 2  # peak layer, x2 margin
        return max(1024, int(free * 0.6 // per_token))

    def attention_scale(self) -> float:
        """C in the runner's cost model: the context length at which attention costs as much as the
        rest of a layer. Per token per layer, the weights cost 2 P FLOPs (P = the layer's parameters)
        and attention over i keys 4 i d (d = heads x head dim), so C = P / d; for SmolLM2-135M,
        C = 6144 (measured on CPU from tokens/s at 2k and 8k: about 6700)."""
        import math

        from evalkit.models.prefix_cost import layer_shape

        if not getattr(self.model.config, "hidden_size", None):
            return math.inf  # cost = tokens
        linear, attention_width = layer_shape(self.model.config)
        return linear / attention_width

    def prefix_costs(self, longest, batch_tokens: int):
        """The measured costs of the three paths a group of prefix-sharing requests can take."""
        from evalkit.models import prefix_cost

        return prefix_cost.costs_for(self, longest, batch_tokens)

    # -- dispatch -------------------------------------------------------------------------
    def handlers(self) -> dict:
        return {
            TokenLossRequest: self.token_losses,
            AnswerScoreRequest: self.score_answers,
            GenerateRequest: self.generate,
            ProbeRequest: self.probe,
        }

    # -- token losses ---------------------------------------------------------------------
    def token_losses(self, requests: list[TokenLossRequest]) -> list[np.ndarray]:
        """Per-token NLL of each sequence: result i has shape (T-1,), float32."""
        import torch

        lengths = {r.length for r in requests}
        assert len(lengths) == 1, "the runner batches requests of one length only"
        ids = self._batch([r.tokens for r in requests])  # (B, T)
        with torch.inference_mode():
            nll = self.sequence_nll(ids)  # (B, T-1)
        out = nll.float().cpu().numpy()  # the only host-device sync of the batch
        return [row for row in out]

    def _batch(self, rows: list[np.ndarray]):
        import torch

        ids = torch.from_numpy(np.stack(rows))  # (B, T)
        if self.device.type == "cuda":
            ids = ids.pin_memory()
        return ids.to(self.device, non_blocking=True)

    # -- answer scoring -------------------------------------------------------------------
    def score_answers(self, requests: list[AnswerScoreRequest]) -> list[AnswerScore]:
        """Log-probs of each gold answer given its prompt; the LM head runs on answer positions only."""
        import torch

        prompt_len = {len(r.prompt) for r in requests}
        answer_len = {len(r.answer) for r in requests}
        assert len(prompt_len) == 1 and len(answer_len) == 1, "the runner batches equal lengths only"
        p, a = prompt_len.pop(), answer_len.pop()
        # the last answer token is only predicted: feeding it would use one position more than generation does
        ids = self._batch([np.concatenate([r.prompt, r.answer[:-1]]) for r in requests])  # (B, P+A-1)
        gold = self._batch([r.answer for r in requests])  # (B, A)
        with torch.inference_mode():
            hidden = decoder_body(self.model)(input_ids=ids, use_cache=False).last_hidden_state  # (B, P+A-1, D)
            return self._answer_scores(hidden[:, p - 1 : p + a - 1], gold)

    def answer_shared(self, requests: list):
        """Answers to requests of one kind, one at a time on a KV cache kept across requests.

        ``requests`` come in lexicographic order of ``prefix.shared_sequence`` (see
        ``evalkit.models.prefix``): the cache is cut back to what each request shares with the one
        before, so common prefixes are computed once. Yields what ``answer`` would, in order.
        """
        import torch
        from transformers import DynamicCache

        from evalkit.models.prefix import common_prefix, shared_sequence

        step = self._score_on_cache if isinstance(requests[0], AnswerScoreRequest) else self._generate_on_cache
        cache, previous = DynamicCache(config=self.model.config), None
        for request in requests:
            sequence = shared_sequence(request)
            cached = cache.get_seq_length()
            # at least the last prompt token runs, as its hidden state predicts what follows
            keep = 0 if previous is None else min(common_prefix(previous, sequence), len(request.prompt) - 1, cached)
            # inference mode per step, not around the yield: the caller's code between steps keeps its own mode
            with torch.inference_mode():
                if keep < cached:
                    cache.crop(keep - cached)  # negative: tokens to drop, in every transformers 5 release
                answer = step(request, cache, keep)
            yield answer
            previous = sequence

    def _score_on_cache(self, request: AnswerScoreRequest, cache, keep: int) -> AnswerScore:
        import torch

        p, a = len(request.prompt), len(request.answer)
        # the answer but its last token runs, as in score_answers, so "length" n conventions see the same row
        ids = torch.from_numpy(np.concatenate([request.prompt, request.answer[:-1]])[keep:]).to(self.device)[None]
        body = decoder_body(self.model)
        hidden = body(input_ids=ids, use_cache=True, **{self._cache_kwarg(): cache}).last_hidden_state
        gold = torch.from_numpy(request.answer).to(self.device)[None]  # (1, A)
        return self._answer_scores(hidden[:, p - 1 - keep : p + a - 1 - keep], gold)[0]

    def _generate_on_cache(self, request: GenerateRequest, cache, keep: int) -> np.ndarray:
        import torch

        ids = torch.from_numpy(request.prompt).to(self.device)[None]  # (1, P); generate runs only ids[:, keep:]
        out = self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            **{self._cache_kwarg(): cache},
            max_new_tokens=request.max_new_tokens,
            **self._greedy(),
        )
        return self._until_eos(out[0, ids.shape[1] :].cpu().numpy())

    def _cache_kwarg(self) -> str:
        """The keyword a KV cache is passed under: ``cache`` since transformers 5.24, which deprecates
        ``past_key_values`` (removed in 5.40); older 5.x releases know only ``past_key_values``."""
        import inspect

        if not hasattr(self, "_cache_name"):
            # inspect.signature follows the decorators' __wrapped__
            forward = inspect.signature(decoder_body(self.model).forward).parameters
            self._cache_name = "cache" if "cache" in forward else "past_key_values"
        return self._cache_name

    def can_share_prefixes(self) -> bool:
        """Whether ``answer_shared`` gives what independent passes give.

        Not with sliding-window caches (they cannot be cut back), nor with the "length" n
        convention, where every query's factor, and so the cached prefix, depends on the row length.
        """
        from transformers import DynamicCache

        if any(getattr(m, "evalkit_n_mode", "position") == "length" for m in self.model.modules()):
            return False
        layers = getattr(DynamicCache(config=self.model.config), "layers", [])
        return bool(layers) and not any(getattr(layer, "is_sliding", False) for layer in layers)

    def answer_branched(self, requests: list, batch_tokens: int) -> list:
        """Answers to requests of one kind that share a trunk: the trunk's cache computed once, the
        suffixes packed into batches on it (``evalkit.models.branch``). Same answers as ``answer``."""
        from evalkit.models.branch import answer_branched

        return answer_branched(self, requests, batch_tokens)

    def can_branch(self) -> bool:
        """Whether ``answer_branched`` gives what independent passes give: where prefixes share, and not
        with a native scaling inside the modelling code (it may count positions its own way)."""
        from evalkit.attention import native_enabled, native_scaling

        native = native_scaling(self.model) is not None and native_enabled(self.model)
        return self.can_share_prefixes() and not native

    def _answer_scores(self, hidden, gold) -> list[AnswerScore]:
        """Scores from the hidden states that predict each answer token: hidden (B, A, D), gold (B, A)."""
        return answer_scores(self.logits(hidden), gold)  # logits (B, A, V)

    # -- attention probes -----------------------------------------------------------------
    def probe(self, requests: list[ProbeRequest]):
        from evalkit.models.probe import run_probes

        return run_probes(self.model, self._batch([r.tokens for r in requests]), requests)

    # -- generation -----------------------------------------------------------------------
    def generate(self, requests: list[GenerateRequest]) -> list[np.ndarray]:
        """Greedy continuation of equal-length prompts (no padding needed), KV cache on."""
        import torch

        ids = self._batch([r.prompt for r in requests])  # (B, P)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max(r.max_new_tokens for r in requests),
                **self._greedy(),
            )
        return [self._until_eos(row) for row in out[:, ids.shape[1] :].cpu().numpy()]  # (B, N) new tokens

    def _greedy(self) -> dict:
        eos_ids = self.eos_ids()
        pad = self.model.generation_config.pad_token_id
        pad = pad if pad is not None else (min(eos_ids) if eos_ids else 0)
        return {"do_sample": False, "pad_token_id": pad, "temperature": None, "top_p": None, "top_k": None}

    def _until_eos(self, new: np.ndarray) -> np.ndarray:
        return until_eos(new, self.eos_ids())

    def eos_ids(self) -> set[int]:
        """End-of-sequence ids: the generation config's (may be a list), else the tokenizer's."""
        eos = self.model.generation_config.eos_token_id
        if eos is None and self.loaded.tokenizer is not None:
            eos = self.loaded.tokenizer.eos_token_id
        return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}

    def sequence_nll(self, ids):
        """NLL of ids[:, 1:] given the prefix; the LM head runs in row chunks."""
        import torch
        import torch.nn.functional as F

        body = decoder_body(self.model)
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
