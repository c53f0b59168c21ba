"""The plain-PyTorch backend: any causal LM ``torch.nn.Module`` that maps token ids to logits.

No transformers model is needed: a module with ``forward(input_ids (B, T)) -> logits (B, T, V)``
answers token losses, answer scoring and greedy generation. What the module offers beyond that it
declares by attributes, never by its class:

- ``max_positions`` / ``training_length``: its position limit and training length (else the caller's
  ``max_positions`` option, else no limit);
- ``evalkit_probe(input_ids (1, T), request) -> ProbeResult``: attention-like statistics for focus;
- ``evalkit_decode(input_ids (B, T), state) -> (logits (B, V), state)``: incremental decoding for
  generation (``state`` None on the first call); without it every new token recomputes the prefix;
- ``evalkit_variants`` (names) and ``evalkit_apply_attention(spec, tables)``: attention variants it
  can switch to; without them only its own attention (``auto``) runs.

Checkpoints of model types evalkit implements itself (``models.loading.NATIVE_MODEL_TYPES``, e.g.
Multiscreen) load from their folder by ``--model DIR``; this backend is chosen for them by ``auto``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evalkit.core.backend import Backend, Capabilities
from evalkit.core.errors import ConfigError, ModelLoadError
from evalkit.core.requests import AnswerScoreRequest, GenerateRequest, ProbeRequest, TokenLossRequest
from evalkit.core.task import option
from evalkit.models.answers import answer_scores, until_eos

ANSWERS = frozenset({"token_loss", "answer_score", "generate"})
NO_VARIANTS = "this model has no softmax attention evalkit can scale: run it with --attention auto"


@dataclass(frozen=True)
class TorchModuleOptions:
    max_positions: int | None = option(None, "Position limit of the module when it does not state one.")


class TorchModuleBackend(Backend):
    name = "torch"
    summary = "any causal LM torch module mapping token ids to logits (evalkit's Multiscreen), no transformers"
    Options = TorchModuleOptions

    @classmethod
    def declared(cls) -> Capabilities:
        # probes and variants exist only where the module declares them: known after loading
        return Capabilities(
            requests=ANSWERS | {"probe"},
            variants=frozenset(),
            native=True,
            notes={"variants": NO_VARIANTS},
        )

    @classmethod
    def load(cls, model: str, options, backend_options=None, log=print) -> TorchModuleBackend:
        from evalkit.models.loading import NATIVE_MODEL_TYPES, folder_model_type, pick_device, pick_dtype

        folder = Path(model).expanduser()
        kind = folder_model_type(model)
        if kind not in NATIVE_MODEL_TYPES:
            known = ", ".join(sorted(NATIVE_MODEL_TYPES))
            raise ModelLoadError(
                f"{model} is not a checkpoint the torch backend loads (model_type {kind!r}; it loads: {known})",
                "use --backend transformers for transformers checkpoints, or evalkit.evaluate(module, tokenizer)",
            )
        module_name, function = NATIVE_MODEL_TYPES[kind].split(":")
        device = pick_device(options.device)
        dtype = pick_dtype(options.dtype, device)
        log(f"loading {kind} checkpoint {folder}")
        module = getattr(importlib.import_module(module_name), function)(folder, device, dtype)
        tokenizer = getattr(module, "tokenizer", None) or _folder_tokenizer(folder)
        return cls(module, tokenizer, folder.resolve().name, backend_options, location=str(folder), kind=kind)

    @classmethod
    def wrap(cls, model, tokenizer, name: str, backend_options=None) -> TorchModuleBackend:
        return cls(getattr(model, "module", model), tokenizer, name, backend_options)

    def __init__(self, module, tokenizer, name: str, backend_options=None, location: str = "memory", kind="module"):
        from evalkit.models.loading import state_hash

        if not callable(module) or not hasattr(module, "parameters"):
            raise ConfigError(
                f"the torch backend got a {type(module).__name__}, not a torch module",
                "pass a torch.nn.Module whose forward maps token ids (B, T) to logits (B, T, V)",
            )
        options = backend_options or TorchModuleOptions()
        self.module = module
        self.tokenizer = tokenizer
        self.name_ = name
        self.location = location
        self.kind = kind
        first = next(module.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.max_positions = getattr(module, "max_positions", None) or options.max_positions
        length = getattr(module, "training_length", None)
        self.training_length = int(length) if length else None
        self.config = getattr(module, "config", None)
        self.content_hash = state_hash(module)
        self.hashes = {"weights": self.content_hash, "config": None, "tokenizer": None}
        from evalkit.attention import AttentionSpec

        self.native_attention = (AttentionSpec(variant="native"), {})
        self.native_scaling = None

    def capabilities(self) -> Capabilities:
        probes = {"probe"} if hasattr(self.module, "evalkit_probe") else set()
        variants = frozenset(getattr(self.module, "evalkit_variants", ()))
        return Capabilities(
            requests=ANSWERS | probes,
            variants=variants,
            native=True,
            notes={
                "variants": NO_VARIANTS,
                "probe": "this module declares no evalkit_probe: focus needs one, or --backend transformers",
            },
        )

    def describe(self) -> dict:
        from evalkit.models.loading import tokenizer_identity

        return {
            "name": self.name_,
            "kind": self.kind,
            "location": self.location,
            "backend": self.name,
            "content_hash": self.content_hash,
            "architecture": type(self.module).__name__,
            "parameters": sum(p.numel() for p in self.module.parameters()),
            "max_position_embeddings": self.max_positions,
            "training_length": self.training_length,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "tokenizer": tokenizer_identity(self.tokenizer),
        }

    def activate(self, variant) -> None:
        if variant.spec.variant == "native":
            return  # the module's own attention: nothing to switch
        if not hasattr(self.module, "evalkit_apply_attention"):
            raise ConfigError(f"the torch backend cannot apply {variant.spec.variant!r} to this module", NO_VARIANTS)
        self.module.evalkit_apply_attention(variant.spec, variant.tables)

    # -- requests ---------------------------------------------------------------------------
    def answer(self, requests: list) -> list:
        import torch

        with torch.inference_mode():
            return super().answer(requests)

    def handlers(self) -> dict:
        answers = {
            TokenLossRequest: self._token_losses,
            AnswerScoreRequest: self._score_answers,
            GenerateRequest: self._generate,
        }
        if hasattr(self.module, "evalkit_probe"):
            answers[ProbeRequest] = self._probe
        return answers

    def _probe(self, requests: list[ProbeRequest]) -> list:
        return [self.module.evalkit_probe(self._ids([r.tokens]), r) for r in requests]

    def _ids(self, rows: list[np.ndarray]):
        import torch

        return torch.from_numpy(np.stack(rows)).to(self.device)  # (B, T)

    def _logits(self, ids):
        return self.module(ids).float()  # (B, T, V)

    def _token_losses(self, requests: list[TokenLossRequest]) -> list[np.ndarray]:
        import torch.nn.functional as F

        ids = self._ids([r.tokens for r in requests])  # (B, T)
        logits = self._logits(ids[:, :-1])  # (B, T-1, V): the last token is only predicted
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
        return list(nll.cpu().numpy())

    def _score_answers(self, requests: list[AnswerScoreRequest]) -> list:
        p, a = len(requests[0].prompt), len(requests[0].answer)
        # the last answer token is only predicted, as in generation
        ids = self._ids([np.concatenate([r.prompt, r.answer[:-1]]) for r in requests])  # (B, P+A-1)
        gold = self._ids([r.answer for r in requests])  # (B, A)
        return answer_scores(self._logits(ids)[:, p - 1 : p + a - 1], gold)  # logits (B, A, V)

    def _generate(self, requests: list[GenerateRequest]) -> list[np.ndarray]:
        """Greedy continuation of equal-length prompts; stops when every row has met an end id."""
        import torch

        ids = self._ids([r.prompt for r in requests])  # (B, P)
        eos = self.eos_ids()
        steps = max(r.max_new_tokens for r in requests)
        decode = getattr(self.module, "evalkit_decode", None)
        state, new = None, []
        for _ in range(steps):
            if decode is not None:
                last, state = decode(ids if state is None else ids[:, -1:], state)  # (B, V)
            else:
                last = self._logits(ids)[:, -1]  # (B, V): the whole prefix again
            token = last.float().argmax(-1, keepdim=True)  # (B, 1)
            new.append(token)
            ids = torch.cat([ids, token], dim=1)
            if eos and bool(torch.isin(torch.cat(new, 1), torch.tensor(sorted(eos), device=ids.device)).any(1).all()):
                break
        out = torch.cat(new, 1).cpu().numpy()  # (B, N)
        return [until_eos(row[: r.max_new_tokens], eos) for row, r in zip(out, requests)]

    def eos_ids(self) -> set[int]:
        eos = getattr(self.module, "eos_token_id", None)
        if eos is None and self.tokenizer is not None:
            eos = self.tokenizer.eos_token_id
        return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}


def _folder_tokenizer(folder: Path):
    """The tokenizer saved beside the weights (tokenizer.json and its config)."""
    if not (folder / "tokenizer.json").is_file():
        raise ModelLoadError(
            f"{folder} has no tokenizer.json beside its weights",
            "save the model's tokenizer into the folder (tokenizer.save_pretrained(folder))",
        )
    from transformers import PreTrainedTokenizerFast  # not AutoTokenizer: it reads config.json's model type

    return PreTrainedTokenizerFast.from_pretrained(str(folder))
