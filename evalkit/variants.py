"""Turning ``--attention`` and its flags into the runner's variants for one loaded model.

The model is loaded once; each variant is switched in place before its samples run. Per-head
tensors a checkpoint carries (learned SSMax scales) are snapshotted first, so switching to
softmax and back does not lose them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from evalkit.errors import ConfigError
from evalkit.runner import Variant


@dataclass(frozen=True)
class AttentionOptions:
    """The attention flags of a run, shared by every variant in ``--attention``."""

    s: float | None = None
    b: float | None = None
    params_file: str | None = None
    train_length: int | None = None
    n_mode: str | None = None  # None: the checkpoint's convention, else "position"

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class ResolvedVariant(Variant):
    describe: dict = field(default_factory=dict)


def _head_tables(model) -> dict:
    """The (layers, heads) s and b tables the model currently holds, if any."""
    from evalkit.attention import attention_modules

    tables = {}
    modules = [m for _, m in attention_modules(model)]
    for param, attr in (("s", "ssmax_s"), ("b", "ssmax_b")):
        rows = [getattr(m, attr, None) for m in modules]
        if modules and all(r is not None for r in rows):
            import torch

            tables[param] = torch.stack([r.detach().float().cpu() for r in rows])  # (L, H)
    return tables


def resolve_variants(loaded, names, options: AttentionOptions) -> list[ResolvedVariant]:
    from evalkit.attention import AttentionSpec, apply_attention, spec_from_model

    model = loaded.model
    stored = spec_from_model(model)
    snapshot = _head_tables(model)
    variants: list[ResolvedVariant] = []
    for name in names:
        base = stored if name == "auto" else AttentionSpec(variant=name)
        if base.variant == "softmax":
            spec = AttentionSpec()
        else:
            needs = _needs(base.variant)
            train_length = options.train_length or stored.train_length or base.train_length
            if base.variant == "logn" and train_length is None:
                train_length = loaded.max_positions  # the training length, for models that state it
            spec = AttentionSpec(
                variant=base.variant,
                s=(options.s if options.s is not None else base.s) if "s" in needs else None,
                b=(options.b if options.b is not None else base.b) if "b" in needs else None,
                train_length=train_length if "train_length" in needs else None,
                n_mode=options.n_mode or stored.n_mode or "position",
                params_file=options.params_file,
            )
        if any(v.label == spec.variant for v in variants):
            raise ConfigError(f"attention variant {spec.variant!r} appears twice in --attention {','.join(names)}",
                              "list each variant once (auto is the checkpoint's own)")
        tables = None if spec.params_file else {k: v for k, v in snapshot.items() if k in _needs(spec.variant)}

        def activate(m, spec=spec, tables=tables):
            apply_attention(m, spec, params=tables or None)

        described = {**spec.to_dict(), "from_checkpoint": name == "auto" and stored.variant != "softmax"}
        if snapshot and spec.variant != "softmax" and not spec.params_file and spec.s is None:
            described["per_head_tensors"] = sorted(tables)
        variants.append(ResolvedVariant(spec.variant, activate, described))
    for variant in variants:  # fail on a missing or malformed parameter now, not after an hour
        variant.activate(model)
    return variants


def _needs(variant: str) -> tuple[str, ...]:
    from evalkit.attention import get_variant

    return get_variant(variant).parameters
