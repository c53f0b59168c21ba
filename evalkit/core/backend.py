"""What answers a task's requests: the backend protocol.

Tasks speak typed requests (``evalkit.core.requests``); a backend answers lists of them and says
what it can do. The runner and ``evaluate`` talk only to this protocol, never to a model: what a
backend cannot do (a request kind, an attention variant, probes) is refused before anything loads,
from the backend's declared capabilities.

Backends are found by name (``--backend NAME``) through the ``evalkit.backends`` entry-point group,
as tasks are; evalkit's own register themselves in pyproject.toml the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from evalkit.core.errors import ConfigError
from evalkit.core.registry import BACKENDS
from evalkit.core.requests import AnswerScoreRequest, GenerateRequest, ProbeRequest, TokenLossRequest

DEFAULT = "transformers"

# Request kinds by the name a backend declares and an error message shows.
REQUEST_KINDS: dict[str, type] = {
    "token_loss": TokenLossRequest,
    "answer_score": AnswerScoreRequest,
    "generate": GenerateRequest,
    "probe": ProbeRequest,
}


def request_kind(request) -> str:
    """The declared name of a request's kind ("token_loss", ...)."""
    for name, cls in REQUEST_KINDS.items():
        if isinstance(request, cls):
            return name
    raise TypeError(f"not an evalkit request: {type(request).__name__}")


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared before it loads anything (``Backend.declared``) and narrowed
    once the model is in memory (``Backend.capabilities``)."""

    requests: frozenset[str]  # request kinds it answers: names from REQUEST_KINDS
    variants: frozenset[str] | None = None  # attention variants it can apply; None: every registered one
    native: bool = True  # answers under the checkpoint's own attention (``auto`` / ``native``)
    shares_prefixes: bool = False  # walks requests that share a prefix on one KV cache (``answer_shared``)
    branches: bool = False  # branches many suffixes off one trunk's cache (``answer_branched``)
    batches_itself: bool = False  # continuous batching: the runner hands it whole lists, not equal-length buckets
    notes: dict[str, str] = field(default_factory=dict)  # why something is missing, and what to use instead

    @property
    def probes(self) -> bool:
        return "probe" in self.requests

    def can_apply(self, variant: str) -> bool:
        if variant in ("auto", "native"):
            return self.native
        return self.variants is None or variant in self.variants


class Backend:
    """A loaded model behind the protocol.

    Subclasses set ``name`` and ``declared`` and implement ``load``, ``handlers``, ``activate`` and
    ``describe``. ``answer_shared`` / ``answer_branched`` exist only where ``capabilities()`` says so.
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `evalkit backends`
    Options: ClassVar[type | None] = None  # a frozen dataclass of backend-specific settings (fields made with
    # ``evalkit.core.task.option``); they become `evalkit run` flags in the backend's help panel

    @classmethod
    def load(cls, model: str, options, backend_options=None, log=print) -> Backend:
        """Load ``model`` (a checkpoint folder, a GGUF file, the embedded default's name) with
        ``options`` (``evalkit.models.loading.LoadOptions``: device, dtype, safety flags, rope) and
        ``backend_options`` (an instance of ``Options``, or None for its defaults)."""
        raise NotImplementedError

    @classmethod
    def check_model(cls, model: str, variants: list[str], options) -> None:
        """Refuse, before anything loads, what this backend cannot do for this checkpoint (read from its
        files, e.g. a variant its model family cannot run); by default nothing beyond ``declared``."""

    @classmethod
    def wrap(cls, model, tokenizer, name: str, backend_options=None) -> Backend:
        """A backend over a model object already in memory (``evalkit.evaluate(model, tokenizer)``)."""
        raise ConfigError(f"the {cls.name} backend cannot wrap a model object", "pass a checkpoint path")

    @classmethod
    def declared(cls) -> Capabilities:
        """What the backend can do whatever the model: checked before loading."""
        raise NotImplementedError

    # -- after load -------------------------------------------------------------------------
    tokenizer: Any
    max_positions: int | None  # the longest sequence the model takes (None: no limit known)
    training_length: int | None  # recorded by the checkpoint, else None
    device: Any  # what the manifest records and batching sizes against (a torch.device for torch backends)

    def capabilities(self) -> Capabilities:
        """What this loaded model can do: the declared capabilities, narrowed by the model."""
        return self.declared()

    def answer(self, requests: list) -> list:
        """One result per request, in order. Requests are of one kind; unless ``batches_itself``,
        of one shape too (the runner buckets them)."""
        kinds = {type(r) for r in requests}
        handler = self.handlers().get(next(iter(kinds))) if len(kinds) == 1 else None
        if handler is None:
            raise TypeError(f"the {self.name} backend does not answer {sorted(k.__name__ for k in kinds)}")
        return handler(requests)

    def handlers(self) -> dict[type, Any]:
        """The method that answers each request class (``TokenLossRequest``: ``self.token_losses``, ...)."""
        raise NotImplementedError

    # The checkpoint's own attention, as loaded: what ``auto`` resolves to and where per-head values
    # missing from the flags come from (``evalkit.run.attention_flags.resolve_variants``).
    native_attention: tuple[Any, dict]  # (AttentionSpec as recorded, {name: per-head tensor})
    native_scaling: Any  # the scaling the modelling code applies itself (``NativeScaling``), or None
    config: Any  # the checkpoint's config (transformers PretrainedConfig or any object with its attributes)

    def activate(self, variant) -> None:
        """Switch the model to a resolved variant (``evalkit.attention.RunVariant``: label, spec,
        per-head tables) before its samples run; called again to switch back."""
        raise NotImplementedError

    def describe(self) -> dict:
        """The manifest's ``model`` record: name, location, content hash, parameters, dtype, tokenizer."""
        raise NotImplementedError

    def batch_tokens(self) -> int:
        """A first guess at the tokens one batch may hold; out-of-memory backoff corrects it."""
        return 2048

    def attention_scale(self) -> float:
        """The context length at which attention costs as much as the rest of a layer (the runner's
        progress cost model); infinite: cost = tokens."""
        return math.inf


def backend_names() -> list[str]:
    return BACKENDS.names()


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name``; a plugin that fails to import raises its real error."""
    return BACKENDS.get(name)


def refuse_unsupported(backend: type[Backend], kinds: set[str], variants: list[str]) -> None:
    """One line naming the backend and what to use instead, for a request kind or variant it cannot
    answer whatever the model (``declared``); the model's own limits are ``Backend.check_model``'s."""
    declared = backend.declared()
    for kind in sorted(kinds - declared.requests):
        instead = declared.notes.get(kind, f"use --backend {DEFAULT}")
        raise ConfigError(f"the {backend.name} backend does not answer {kind} requests", instead)
    for variant in variants:
        if not declared.can_apply(variant):
            instead = declared.notes.get("variants", f"use --attention auto, or --backend {DEFAULT}")
            raise ConfigError(f"the {backend.name} backend cannot apply attention variant {variant!r}", instead)
