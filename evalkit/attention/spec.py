"""``AttentionSpec``: which variant a run uses, with its scalar parameters, as a typed record.

The spec is what a manifest stores and what the CLI builds from its flags. Per-head tables
(s_h, b_h differing across layers and heads) do not fit in it: they live in the model (as
``ssmax_s``/``ssmax_b`` tensors, see ``apply.py``) or in the file named by ``params_file``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from evalkit.attention.variants import PARAMETER_FLAGS, get_variant
from evalkit.core.errors import ConfigError

NMode = Literal["position", "length"]
N_MODES: tuple[str, ...] = ("position", "length")


@dataclass(frozen=True)
class AttentionSpec:
    """One attention variant and its parameters.

    n_mode: "position" counts, for each query, the keys it may attend to (causal: i + 1);
    "length" uses the total key length for every query (as the PyPI ``scalable-softmax`` does).
    Variants that read the absolute position (llama4-temp, mistral-beta) ignore it.
    layers: which layers use the variant (the others run plain softmax): "all", "nope" or
    "rope" (by the config's ``no_rope_layers``), or layer indices "0,2,5".
    """

    variant: str = "softmax"
    s: float | None = None
    b: float | None = None
    train_length: int | None = None
    n_mode: NMode = "position"
    params_file: str | None = None
    attn_scale: float | None = None
    floor_scale: float | None = None
    beta: float | None = None
    original_length: int | None = None
    layers: str = "all"

    def __post_init__(self) -> None:
        get_variant(self.variant)  # unknown name -> ConfigError with "did you mean"
        if self.n_mode not in N_MODES:
            raise ConfigError(f"unknown n mode {self.n_mode!r}", f"use one of {', '.join(N_MODES)}")
        for name in ("s", "b", "attn_scale", "beta", "floor_scale"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            ):
                raise ConfigError(
                    f"{PARAMETER_FLAGS[name]} must be a finite number, got {value!r}",
                    "give one number, or a per-layer/head table with --attention-params"
                    if name in ("s", "b")
                    else f"e.g. {PARAMETER_FLAGS[name]} 0.1",
                )
        if self.floor_scale is not None and self.floor_scale <= 0:
            raise ConfigError(f"--floor-scale must be > 0, got {self.floor_scale!r}", "e.g. --floor-scale 8192")
        for name, least in (("train_length", 2), ("original_length", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ConfigError(
                    f"{PARAMETER_FLAGS[name]} must be an integer >= {least}, got {value!r}",
                    f"pass the context length the model was trained with, e.g. {PARAMETER_FLAGS[name]} 2048",
                )
        object.__setattr__(self, "layers", canonical_layers(self.layers))

    def with_defaults(self, config: Any = None) -> AttentionSpec:
        """The spec with the variant's defaults filled in for parameters not given; a default
        that names a config attribute (original_length: max_position_embeddings) reads it from
        ``config`` (a model config; its text config for multimodal models)."""
        variant = get_variant(self.variant)
        filled = {}
        for name in variant.parameters:
            default = variant.defaults.get(name)
            if getattr(self, name) is not None or default is None:
                continue
            if isinstance(default, str):
                text = config.get_text_config() if hasattr(config, "get_text_config") else config
                default = getattr(text, default, None)
                if default is None:
                    continue  # require() then names the flag to pass
            filled[name] = default
        return replace(self, **filled) if filled else self

    def require(self, available: set[str] | frozenset[str] = frozenset()) -> None:
        """Raise ConfigError if a parameter the variant needs is neither in the spec nor in
        ``available`` (the names of per-head tensors the model or a params file provides)."""
        for name in get_variant(self.variant).parameters:
            if getattr(self, name) is None and name not in available:
                flag = PARAMETER_FLAGS[name]
                where = " (or a per-head table in the checkpoint)" if name in ("s", "b") else ""
                raise ConfigError(
                    f"attention variant {self.variant!r} needs {flag}{where}",
                    f"pass {flag} VALUE",
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict for manifests and config.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttentionSpec:
        """Inverse of ``to_dict``; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"unknown attention spec keys {sorted(unknown)}",
                f"allowed keys: {', '.join(sorted(known))}",
            )
        return cls(**data)


def parse_attention_list(text: str) -> list[str]:
    """``"softmax,ssmax"`` -> ``["softmax", "ssmax"]``, each name checked against the registry."""
    names = [part.strip() for part in str(text).split(",")]
    if not text or any(not name for name in names):
        raise ConfigError(
            f"empty attention variant in {text!r}",
            "give comma-separated names, e.g. --attention softmax,ssmax",
        )
    seen: list[str] = []
    for name in names:
        get_variant(name)
        if name in seen:
            raise ConfigError(f"attention variant {name!r} listed twice in {text!r}", "list it once")
        seen.append(name)
    return seen


LAYER_GROUPS = ("all", "nope", "rope")


def canonical_layers(layers: Any) -> str:
    """--attention-layers as one canonical string: "all", "nope", "rope" or sorted "0,2,5"."""
    if isinstance(layers, (list, tuple)):
        layers = ",".join(str(i) for i in layers)
    text = str(layers).strip().lower().replace(" ", "")
    if text in LAYER_GROUPS:
        return text
    try:
        indices = sorted({int(part) for part in text.split(",")})
    except ValueError:
        indices = []
    if not indices or indices[0] < 0:
        raise ConfigError(
            f"bad --attention-layers {layers!r}",
            "use all, nope, rope or layer indices like 0,2,5",
        )
    return ",".join(map(str, indices))


@dataclass(frozen=True)
class RunVariant:
    """An attention variant as one run uses it: the label its rows carry, its spec, the per-head tables
    it applies (the checkpoint's own, snapshotted at load) and what the manifest records about it.
    A backend switches to it with ``Backend.activate``."""

    label: str
    spec: AttentionSpec
    tables: dict | None = None  # {parameter: per-head tensor}; None: the spec's scalars (or params_file)
    describe: dict = field(default_factory=dict)
