"""Turning ``--attention`` and its flags into the runner's variants for one loaded model.

The model is loaded once; each variant is switched in place before its samples run. Per-head
tensors a checkpoint carries (learned SSMax scales) are snapshotted first, so switching to
softmax and back does not lose them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evalkit.attention.spec import RunVariant
from evalkit.core.errors import ConfigError


@dataclass(frozen=True)
class AttentionOptions:
    """The attention flags of a run, shared by every variant in ``--attention``."""

    s: float | None = None
    b: float | None = None
    params_file: str | None = None
    train_length: int | None = None
    n_mode: str | None = None  # None: the checkpoint's convention, else "position"
    attn_scale: float | None = None  # llama4-temp (default 0.1)
    floor_scale: float | None = None  # llama4-temp (default 8192)
    beta: float | None = None  # mistral-beta (default 0.1)
    original_length: int | None = None  # mistral-beta (default: max_position_embeddings)
    layers: str | None = None  # --attention-layers; None: all

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class VariantRequest:
    """One entry of ``--attention`` (or a sweep's [[attention]]): a name, its flags, a row label."""

    name: str
    options: AttentionOptions = AttentionOptions()
    label: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> VariantRequest:
        data = dict(data)
        name, label = data.pop("name"), data.pop("label", None)
        unknown = set(data) - set(AttentionOptions.__dataclass_fields__)
        if unknown:
            raise ConfigError(
                f"unknown attention setting(s) {sorted(unknown)} for {name!r}",
                f"allowed: name, label, {', '.join(AttentionOptions.__dataclass_fields__)}",
            )
        return cls(name, AttentionOptions(**data), label)

    def to_dict(self) -> dict:
        return {"name": self.name, **({"label": self.label} if self.label else {}), **self.options.to_dict()}


def resolve_variants(backend, requests: list[VariantRequest]) -> list[RunVariant]:
    """Specs for each request; ``auto`` and missing per-head values come from the checkpoint as loaded
    (``backend.native_attention``). Each variant is switched on once here, so a missing or malformed
    parameter fails now, not after an hour; the backend refuses what it cannot apply."""
    from evalkit.attention import AttentionSpec

    stored, snapshot = backend.native_attention
    native = backend.native_scaling  # the checkpoint's own scaling, as shipped
    capabilities = backend.capabilities()
    variants: list[RunVariant] = []
    for request in requests:
        name, options = request.name, request.options
        base = _base_spec(name, stored, native)
        if not capabilities.can_apply(base.variant):
            raise ConfigError(
                f"the {backend.name} backend cannot apply attention variant {name!r} to this model",
                capabilities.notes.get("variants", "use --attention auto, or --backend transformers"),
            )
        if base.variant in ("softmax", "native"):
            spec = AttentionSpec(variant=base.variant)
        else:
            needs = _needs(base.variant)
            train_length = options.train_length or stored.train_length or base.train_length
            if base.variant == "logn" and train_length is None:
                train_length = backend.max_positions  # the training length, for models that state it
            scalars = {
                name: _first(getattr(options, name), getattr(base, name))
                for name in ("attn_scale", "floor_scale", "beta", "original_length")
                if name in needs
            }
            if "original_length" in needs and scalars["original_length"] is None:
                scalars["original_length"] = backend.max_positions
            spec = AttentionSpec(
                variant=base.variant,
                s=(options.s if options.s is not None else base.s) if "s" in needs else None,
                b=(options.b if options.b is not None else base.b) if "b" in needs else None,
                train_length=train_length if "train_length" in needs else None,
                n_mode=options.n_mode or stored.n_mode or "position",
                params_file=options.params_file,
                layers=options.layers or base.layers,
                **scalars,
            ).with_defaults(backend.config)
        label = request.label or spec.variant
        if any(v.label == label for v in variants):
            raise ConfigError(
                f"attention variant {label!r} appears twice in --attention {','.join(r.name for r in requests)}",
                "list each variant once (auto is the checkpoint's own), or give each its own label",
            )
        tables = None if spec.params_file else {k: v for k, v in snapshot.items() if k in _needs(spec.variant)}
        described = {
            **spec.to_dict(),
            "label": label,
            "from_checkpoint": name == "auto" and stored.variant != "softmax",
        }
        if native is not None:  # what this variant did with the checkpoint's own scaling
            described["native_scaling"] = {**native.to_dict(), "active": spec.variant == "native"}
        if snapshot and spec.variant not in ("softmax", "native") and not spec.params_file and spec.s is None:
            described["per_head_tensors"] = sorted(tables)
        variants.append(RunVariant(label, spec, tables or None, described))
    for variant in variants:  # fail on a missing or malformed parameter now, not after an hour
        backend.activate(variant)
    return variants


def _base_spec(name: str, stored, native):
    """The spec a request starts from, before its flags: ``auto`` is the checkpoint's evalkit
    variant, else its native scaling (so a Ministral 3 runs as shipped by default); the variant
    that matches the native scaling (mistral-beta on Ministral 3) takes the checkpoint's
    parameters and layers for the flags not given."""
    from evalkit.attention import AttentionSpec

    if name == "auto":
        return stored if stored.variant != "softmax" or native is None else AttentionSpec(variant="native")
    if native is not None and name == native.variant:
        return native.spec()
    return AttentionSpec(variant=name)


def _first(*values):
    return next((v for v in values if v is not None), None)


def _needs(variant: str) -> tuple[str, ...]:
    from evalkit.attention import get_variant

    return get_variant(variant).parameters


# RoPE types whose frequencies depend on the row's length once it passes the original limit
# (transformers' dynamic NTK and Phi-3 longrope switch by sequence length, not by position)
_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def prefix_limits(config, variants: list[RunVariant]) -> tuple[tuple[int, str], ...]:
    """(longest exact row length, why) for each reason a position's loss may depend on more than
    the tokens before it; rows up to every limit score their first L positions as a row of L does."""
    limits = []
    by_length = [v.label for v in variants if v.describe.get("n_mode") == "length"]
    if by_length:  # every query's n is the row's length
        limits.append((1, f"--ssmax-n length on {', '.join(by_length)}: n is the whole row's length"))
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    if window:
        limits.append((int(window), f"sliding window of {window} tokens (config.sliding_window)"))
    rope = getattr(config, "rope_parameters", None) or {}
    for params in [rope, *(v for v in rope.values() if isinstance(v, dict))]:
        kind = params.get("rope_type")
        if kind in _LENGTH_DEPENDENT_ROPE:
            limit = int(params.get("original_max_position_embeddings") or config.max_position_embeddings)
            limits.append((limit, f"{kind} RoPE changes its frequencies with the row's length past {limit}"))
            break
    return tuple(limits)


def attention_flag_requests(
    attention, ssmax_s=None, ssmax_b=None, attention_params=None, train_length=None, ssmax_n=None, **extra
) -> tuple[dict, ...]:
    """``--attention a,b`` and the shared attention flags as one request per variant, for the command line
    and the Python API alike: ``attention`` is "softmax,ssmax" or a list, and a flag given as a list
    (``ssmax_s=[0.3, 0.4]``) or "0.3,0.4" expands into one variant per value (a calibration sweep)."""
    from evalkit.run.calibration import expand, parse_values

    names = [a.strip() for a in (attention.split(",") if isinstance(attention, str) else attention)]
    if not names or not all(names):
        raise ConfigError(
            f"empty name in --attention {attention!r}", "give comma-separated variants, e.g. softmax,ssmax"
        )
    if ssmax_n is not None and ssmax_n not in ("position", "length"):
        raise ConfigError(f"bad --ssmax-n {ssmax_n!r}", "use position or length")
    if attention_params is not None and not Path(attention_params).is_file():
        raise ConfigError(f"--attention-params file {attention_params} not found", "give a .json or .safetensors file")
    values = {
        "s": parse_values("--ssmax-s", _joined(ssmax_s)),
        "b": parse_values("--ssmax-b", _joined(ssmax_b)),
        "train_length": parse_values("--train-length", _joined(train_length), length=True),
        **_variant_scalars(**{k: _joined(v) for k, v in extra.items()}),
    }
    fixed = {
        k: v
        for k, v in {"params_file": attention_params, "n_mode": ssmax_n, "layers": values.pop("layers")}.items()
        if v is not None
    }
    return tuple({**request, **fixed} for request in expand(names, values))


def _joined(value):
    """A list of values as the command line writes it: [0.3, 0.4] -> "0.3,0.4"."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def _variant_scalars(attn_scale=None, floor_scale=None, beta=None, original_length=None, attention_layers=None) -> dict:
    """The llama4-temp / mistral-beta flags and --attention-layers as request settings."""
    from evalkit.attention.spec import canonical_layers
    from evalkit.run.calibration import parse_values

    return {
        "attn_scale": parse_values("--attn-scale", attn_scale),
        "floor_scale": parse_values("--floor-scale", floor_scale),
        "beta": parse_values("--beta", beta),
        "original_length": parse_values("--original-length", original_length, length=True),
        "layers": canonical_layers(attention_layers) if attention_layers else None,
    }
