"""Finding a model's self-attention modules, the objects every variant, probe and native scaling acts on.

Its own module so that switching (``apply``), native scalings (``native``) and probes all stand on it
without importing one another.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from evalkit.core.errors import ConfigError


def _recorded_attention_classes(model: nn.Module) -> tuple[type, ...]:
    """The classes transformers itself records attention weights from (``_can_record_outputs``)."""
    spec = getattr(model, "_can_record_outputs", None) or {}
    recorded = spec.get("attentions") if isinstance(spec, Mapping) else None
    items = recorded if isinstance(recorded, (list, tuple)) else [recorded]
    classes = []
    for item in items:
        cls = item if isinstance(item, type) else getattr(item, "target_class", None)
        if isinstance(cls, type):
            classes.append(cls)
    return tuple(classes)


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every self-attention module, in layer order.

    A module qualifies if it is of a class transformers records attentions from, or (fallback
    for models that do not declare one) its class name ends in "Attention"; either way it must
    carry ``layer_idx`` and ``config``, which AttentionInterface-style modules do.
    """
    classes = _recorded_attention_classes(model)
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        is_attention = isinstance(module, classes) if classes else type(module).__name__.endswith("Attention")
        if not (is_attention and hasattr(module, "layer_idx") and hasattr(module, "config")):
            continue
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue  # an attention inside an attention: only the outer one dispatches
        found.append((name, module))
    found.sort(key=lambda item: (item[1].layer_idx is None, item[1].layer_idx or 0))
    if not found:
        raise ConfigError(
            f"found no attention modules in {type(model).__name__}",
            "evalkit attention variants need a transformers model whose attention uses AttentionInterface",
        )
    return found
