"""Scalings that transformers' own modelling code applies to q, before evalkit's function sees it.

Some checkpoints ship a per-query factor on q inside their attention module's ``forward``:

- Llama 4 text (``Llama4TextAttention``): temperature tuning on its NoPE layers, when the module's
  ``attn_temperature_tuning`` is set (copied from the config at construction), with the config's
  ``attn_scale`` and ``floor_scale``. evalkit's ``llama4-temp`` computes the same factor.
- Ministral 3 and Mistral 4 (any model whose modelling module defines ``get_llama_4_attn_scale``):
  ``1 + beta * log(1 + floor(pos / L0))`` on every layer, with beta =
  ``config.rope_parameters["llama_4_scaling_beta"]`` and L0 =
  ``rope_parameters["original_max_position_embeddings"]``, both read at every forward.
  evalkit's ``mistral-beta`` computes the same factor.

evalkit calls such a scaling the checkpoint's *native* scaling. ``detect`` names it (as the
evalkit variant with the same formula, its parameters and layers); ``set_native(model, False)``
turns it off through the attribute/config entry the modelling code reads (attn_temperature_tuning
= False; llama_4_scaling_beta = 0.0, which makes the factor exactly 1.0), and ``set_native(model,
True)`` puts the shipped values back. No class is patched. The shipped values are captured on the
first call and kept on the model, so switching back and forth never loses them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from torch import nn

from evalkit.attention.modules import attention_modules
from evalkit.attention.spec import AttentionSpec

_STATE = "_evalkit_native"  # model attribute: (NativeScaling | None,) captured at first sight


@dataclass(frozen=True)
class NativeScaling:
    """A checkpoint's built-in factor on q, described as the evalkit variant that matches it."""

    variant: str  # "llama4-temp" | "mistral-beta"
    params: dict[str, Any]  # the variant's scalar parameters, as the checkpoint's config sets them
    layers: str  # canonical --attention-layers: "nope" or "all"
    layer_indices: tuple[int, ...]  # attention modules (0-based, layer order) that apply it
    source: str  # where the modelling code reads it, for people

    def spec(self) -> AttentionSpec:
        """The evalkit spec computing the same factor through evalkit's attention function."""
        return AttentionSpec(variant=self.variant, layers=self.layers, **self.params)

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            **self.params,
            "layers": self.layers,
            "layer_indices": list(self.layer_indices),
            "source": self.source,
        }


def _text_configs(model: nn.Module, modules: list[nn.Module]) -> list[Any]:
    """Every config object the attention modules read (normally one, the text config)."""
    found: dict[int, Any] = {}
    for module in modules:
        found.setdefault(id(module.config), module.config)
    return list(found.values())


def _uses_llama4_beta(module: nn.Module) -> bool:
    # Ministral 3 and Mistral 4 define (modular "copied from") this helper next to the attention
    # class that calls it; a model gaining it in a future release is picked up the same way.
    return hasattr(sys.modules.get(type(module).__module__), "get_llama_4_attn_scale")


def _detect(model: nn.Module) -> NativeScaling | None:
    try:
        modules = [m for _, m in attention_modules(model)]
    except Exception:  # no attention modules evalkit can drive: nothing native to control either
        return None
    temperature = [i for i, m in enumerate(modules) if hasattr(m, "attn_temperature_tuning") and hasattr(m, "use_rope")]
    if temperature:
        tuned = [i for i in temperature if modules[i].attn_temperature_tuning and not modules[i].use_rope]
        if not tuned:
            return None
        first = modules[tuned[0]]
        floor_scale = first.floor_scale
        return NativeScaling(
            variant="llama4-temp",
            params={
                "attn_scale": float(first.attn_scale),
                "floor_scale": int(floor_scale) if float(floor_scale).is_integer() else float(floor_scale),
            },
            layers="nope" if getattr(first.config, "no_rope_layers", None) else ",".join(map(str, tuned)),
            layer_indices=tuple(tuned),
            source=f"{type(first).__name__}.attn_temperature_tuning (config attn_scale, floor_scale; NoPE layers)",
        )
    if modules and all(_uses_llama4_beta(m) for m in modules):
        rope = getattr(modules[0].config, "rope_parameters", None) or {}
        beta = rope.get("llama_4_scaling_beta")
        if not beta:  # None or 0.0: the factor is exactly 1
            return None
        return NativeScaling(
            variant="mistral-beta",
            params={"beta": float(beta), "original_length": int(rope["original_max_position_embeddings"])},
            layers="all",
            layer_indices=tuple(range(len(modules))),
            source=f"{type(modules[0]).__name__} get_llama_4_attn_scale (config rope_parameters "
            "llama_4_scaling_beta, original_max_position_embeddings)",
        )
    return None


def native_scaling(model: nn.Module) -> NativeScaling | None:
    """The model's native scaling as shipped (captured the first time any evalkit code asks)."""
    state = model.__dict__.get(_STATE)
    if state is None:
        state = (_detect(model),)
        model.__dict__[_STATE] = state  # plain attribute: not a submodule, not in the state dict
    return state[0]


def set_native(model: nn.Module, enabled: bool) -> None:
    """Turn the model's native scaling on (as shipped) or off; a no-op for models without one."""
    scaling = native_scaling(model)
    if scaling is None:
        return
    modules = [m for _, m in attention_modules(model)]
    if scaling.variant == "llama4-temp":
        # the module copied config.attn_temperature_tuning at construction and reads its copy
        for module in modules:
            if hasattr(module, "attn_temperature_tuning"):
                module.attn_temperature_tuning = enabled
        for config in _text_configs(model, modules):
            config.attn_temperature_tuning = enabled  # so a saved checkpoint runs as it ran here
    else:
        beta = scaling.params["beta"] if enabled else 0.0  # 1 + 0.0 * log(...) == 1.0 exactly
        for config in _text_configs(model, modules):
            config.rope_parameters["llama_4_scaling_beta"] = beta  # read at every forward


def native_enabled(model: nn.Module) -> bool:
    """Whether the native scaling is on now (False for models without one)."""
    scaling = native_scaling(model)
    if scaling is None:
        return False
    module = next(m for i, (_, m) in enumerate(attention_modules(model)) if i == scaling.layer_indices[0])
    if scaling.variant == "llama4-temp":
        return bool(module.attn_temperature_tuning)
    return bool(module.config.rope_parameters.get("llama_4_scaling_beta"))
