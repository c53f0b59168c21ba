"""The registry of attention variants.

Every variant evalkit supports is a per-query, per-head factor on q (design.md, "The math"):
``weights_i = softmax(factor_{h,i} * q_i . K / sqrt(d))``. Expressing a variant this way lets one
fused kernel (torch SDPA) serve them all; no variant ever builds an n x n tensor.

A variant is a frozen ``Variant`` record: its name, the formula as text (for ``evalkit attention
list`` and manifests), the parameters it needs, and a function from n (the number of keys each
query may see) to the factor. Adding a variant is one ``register_variant(Variant(...))`` call.

This module does not import torch at module level: the factor functions only call methods on
the tensors they are given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evalkit.core.errors import ConfigError, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    import torch

# The parameters a variant may need. "s" and "b" are per-head tensors of shape (H,), float32;
# the others are scalars: "train_length" and "original_length" ints (L in the formulas),
# "attn_scale", "floor_scale" and "beta" numbers.
PARAMETER_FLAGS = {
    "s": "--ssmax-s",
    "b": "--ssmax-b",
    "train_length": "--train-length",
    "attn_scale": "--attn-scale",
    "floor_scale": "--floor-scale",
    "beta": "--beta",
    "original_length": "--original-length",
}
SCALAR_PARAMETERS = ("train_length", "attn_scale", "floor_scale", "beta", "original_length")

# What x the factor function receives (Variant.counts), as `attention list` shows it.
COUNTS = {"keys": "keys visible", "position": "absolute position", "checkpoint": "the checkpoint's own"}

FactorFn = Callable[["torch.Tensor", int, Mapping[str, Any]], "torch.Tensor"]


@dataclass(frozen=True)
class Variant:
    """One attention variant: a name, its formula, its parameters, and its factor on q.

    ``factor(x, num_heads, params)`` takes x as a float32 tensor (float64 in a float64 model) of
    shape (B or 1, 1, T_q, 1) and returns the factor in x's dtype, of shape (B or 1, H, T_q, 1).
    x depends on ``counts``: "keys" gives n_i, the number of keys query i may see (causal
    position, left padding, KV cache and sliding window all counted; clamped to >= 1);
    "position" gives the query's absolute 0-based position as the model's position_ids state it
    (with left padding: its position among the real tokens).
    ``factor is None`` means the identity (plain softmax): callers skip the multiplication so
    the result is bit-identical to stock attention.
    ``defaults``: values for parameters the user did not give; a string names the model config
    attribute to take the value from (e.g. "max_position_embeddings").
    """

    name: str
    formula: str  # the weights, as the design table writes them
    scale: str  # the factor on q_i, as text
    parameters: tuple[str, ...]
    description: str
    factor: FactorFn | None
    counts: str = "keys"
    defaults: Mapping[str, float | int | str] = field(default_factory=dict)


def _per_head(t: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """(H,) -> (1, H, 1, 1) in n's dtype, so it broadcasts against n of shape (B, 1, T_q, 1)."""
    return t.to(n.dtype).view(1, -1, 1, 1)


def _ssmax(n: torch.Tensor, num_heads: int, params: Mapping[str, Any]) -> torch.Tensor:
    return _per_head(params["s"], n) * n.log()  # (B, H, T_q, 1)


def _ssmax_bias(n: torch.Tensor, num_heads: int, params: Mapping[str, Any]) -> torch.Tensor:
    return _per_head(params["s"], n) * n.log() + _per_head(params["b"], n)  # (B, H, T_q, 1)


def _logn(n: torch.Tensor, num_heads: int, params: Mapping[str, Any]) -> torch.Tensor:
    # Identity inside the training length, log-length scaling beyond it: training-free.
    factor = (n.log() / math.log(params["train_length"])).clamp(min=1.0)  # (B, 1, T_q, 1)
    return factor.expand(-1, num_heads, -1, -1)  # (B, H, T_q, 1), a view: no copy


def _llama4_temp(pos: torch.Tensor, num_heads: int, params: Mapping[str, Any]) -> torch.Tensor:
    # transformers models/llama4/modeling_llama4.py, Llama4TextAttention.forward (NoPE layers with
    # attn_temperature_tuning): log1p(floor((positions + 1) / floor_scale)) * attn_scale + 1, where
    # positions = arange + past_seen_tokens; we take position_ids, equal to it without left padding.
    factor = ((pos + 1.0) / params["floor_scale"]).floor().log1p() * params["attn_scale"] + 1.0  # (B, 1, T_q, 1)
    return factor.expand(-1, num_heads, -1, -1)  # (B, H, T_q, 1)


def _mistral_beta(pos: torch.Tensor, num_heads: int, params: Mapping[str, Any]) -> torch.Tensor:
    # transformers models/ministral3/modeling_ministral3.py (and mistral4), get_llama_4_attn_scale:
    # 1 + beta * log(1 + floor(position_ids / original_max_position_embeddings))
    factor = 1.0 + params["beta"] * (1.0 + (pos / params["original_length"]).floor()).log()  # (B, 1, T_q, 1)
    return factor.expand(-1, num_heads, -1, -1)  # (B, H, T_q, 1)


VARIANTS: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    """Add a variant to the registry; a second variant under the same name is an error."""
    if variant.name in VARIANTS:
        raise ValueError(f"attention variant {variant.name!r} is already registered")
    unknown = (set(variant.parameters) | set(variant.defaults)) - set(PARAMETER_FLAGS)
    if unknown:
        raise ValueError(f"variant {variant.name!r} names unknown parameters {sorted(unknown)}")
    if variant.counts not in COUNTS:
        raise ValueError(f"variant {variant.name!r}: counts must be one of {sorted(COUNTS)}")
    VARIANTS[variant.name] = variant
    return variant


register_variant(
    Variant(
        name="softmax",
        formula="softmax(z)",
        scale="1",
        parameters=(),
        description="Standard attention; identical to transformers' sdpa.",
        factor=None,
    )
)
register_variant(
    Variant(
        name="ssmax",
        formula="softmax(s_h * log(n_i) * z)",
        scale="s_h * log(n_i)",
        parameters=("s",),
        description="Scalable-Softmax with a per-head scale s_h (learned or given).",
        factor=_ssmax,
    )
)
register_variant(
    Variant(
        name="ssmax-bias",
        formula="softmax((s_h * log(n_i) + b_h) * z)",
        scale="s_h * log(n_i) + b_h",
        parameters=("s", "b"),
        description="Scalable-Softmax with a per-head bias b_h.",
        factor=_ssmax_bias,
    )
)
register_variant(
    Variant(
        name="logn",
        formula="softmax(max(1, log(n_i) / log(L)) * z)",
        scale="max(1, log(n_i) / log(L))",
        parameters=("train_length",),
        description="Training-free log-n scaling: identity within the training length L.",
        factor=_logn,
    )
)
register_variant(
    Variant(
        name="llama4-temp",
        formula="softmax((1 + a * log(floor((pos_i + 1) / F) + 1)) * z)",
        scale="1 + a * log(floor((pos_i + 1) / F) + 1)",
        parameters=("attn_scale", "floor_scale"),
        description="Llama 4 attention temperature tuning (its NoPE layers): a = attn_scale, F = floor_scale.",
        factor=_llama4_temp,
        counts="position",
        defaults={"attn_scale": 0.1, "floor_scale": 8192},
    )
)
register_variant(
    Variant(
        name="mistral-beta",
        formula="softmax((1 + beta * log(1 + floor(pos_i / L0))) * z)",
        scale="1 + beta * log(1 + floor(pos_i / L0))",
        parameters=("beta", "original_length"),
        description="Mistral 3 / Ministral 3 / Mistral 4 position scaling: L0 = original length.",
        factor=_mistral_beta,
        counts="position",
        defaults={"beta": 0.1, "original_length": "max_position_embeddings"},
    )
)

register_variant(
    Variant(
        name="native",
        formula="the checkpoint's own (softmax(z) if it has none)",
        scale="as the modelling code ships it",
        parameters=(),
        description="The checkpoint as shipped: the stock transformers forward, with the scaling its modelling "
        "code applies to q (Llama 4 temperature, Ministral 3 / Mistral 4 beta); softmax for others.",
        factor=None,
        counts="checkpoint",
    )
)


def get_variant(name: str) -> Variant:
    """The registered variant called ``name``; ConfigError with a suggestion otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        pass
    hint = did_you_mean(name, VARIANTS, cutoff=0.5)
    raise ConfigError(
        f"unknown attention variant {name!r}",
        f"{hint}choose one of {', '.join(VARIANTS)} (see `evalkit attention list`)",
    )


def describe_variants() -> list[dict[str, Any]]:
    """One dict per variant (name, formula, scale, n convention, parameters as CLI flags with
    their defaults, description)."""
    return [
        {
            "name": v.name,
            "formula": v.formula,
            "scale": v.scale,
            "n": COUNTS[v.counts],
            "parameters": [PARAMETER_FLAGS[p] for p in v.parameters],
            "defaults": {PARAMETER_FLAGS[p]: d for p, d in v.defaults.items()},
            "description": v.description,
        }
        for v in VARIANTS.values()
    ]
