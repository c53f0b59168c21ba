"""Override a model's RoPE settings before the model is built.

In transformers 5.x RoPE settings live in ``config.rope_parameters``, a dict such as
``{"rope_type": "default", "rope_theta": 10000.0}`` (Llama; no top-level ``rope_theta``
attribute any more). Models with several layer types may nest one such dict per layer type
(``{"full_attention": {...}, "sliding_attention": {...}}``); every nested dict is changed.
The rotary embedding reads the dict once, in its ``__init__``: change the config, then build the
model (``AutoModelForCausalLM.from_pretrained(path, config=config)``). Changing the config of an
already built model has no effect.

Scalings (each needs ``factor`` >= 1):
- linear:  positions divided by factor.
- dynamic: NTK-aware base growth once a sequence exceeds ``config.max_position_embeddings``.
- yarn:    YaRN, with ``original_max_position_embeddings`` = the current one if set, else
           ``config.max_position_embeddings`` (the training length).
- none:    back to plain RoPE.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from evalkit.core.errors import ConfigError

SCALINGS = ("linear", "dynamic", "yarn", "none")
_KEEP_KEYS = ("partial_rotary_factor",)  # not about scaling: carried over unchanged


def _positive(value: Any, flag: str, minimum: float, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{flag} must be a number >= {minimum:g}, got {value!r}", hint)
    return float(value)


def override_rope(
    config: Any,
    theta: float | None = None,
    scaling: str | None = None,
    factor: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Change ``config.rope_parameters`` in place; return ``{key: {"from": old, "to": new}}``
    for every value that changed (keys prefixed by layer type for nested configs)."""
    if theta is not None:
        theta = _positive(theta, "--rope-theta", 1.0, "e.g. --rope-theta 500000")
    if scaling is not None and scaling not in SCALINGS:
        raise ConfigError(f"unknown RoPE scaling {scaling!r}", f"use one of {', '.join(SCALINGS)}")
    if factor is not None:
        factor = _positive(factor, "--rope-factor", 1.0, "e.g. --rope-factor 4 to stretch 4x")
        if scaling in (None, "none"):
            raise ConfigError("--rope-factor needs a scaling", "add --rope-scaling linear, dynamic or yarn")
    if scaling in ("linear", "dynamic", "yarn") and factor is None:
        raise ConfigError(f"RoPE scaling {scaling!r} needs a factor", "add e.g. --rope-factor 4")

    rope = getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict) or not rope:
        raise ConfigError(
            f"{type(config).__name__} has no RoPE parameters to override",
            "drop the --rope-* options for this model",
        )
    backup = copy.deepcopy(rope)  # restored if transformers rejects the result
    labels = getattr(config, "layer_types", None) or ()
    nested = [key for key in rope if key in labels and isinstance(rope[key], dict)]
    targets = {key: rope[key] for key in nested} if nested else {"": rope}

    changes: dict[str, dict[str, Any]] = {}
    for label, params in targets.items():
        old = dict(params)
        new = dict(params)
        if theta is not None:
            new["rope_theta"] = theta
        if scaling is not None:
            rope_type = "default" if scaling == "none" else scaling
            new = {"rope_type": rope_type, "rope_theta": new.get("rope_theta")}
            new.update({k: old[k] for k in _KEEP_KEYS if k in old})
            if factor is not None:
                new["factor"] = factor
            if rope_type == "yarn":
                new["original_max_position_embeddings"] = old.get(
                    "original_max_position_embeddings", config.max_position_embeddings
                )
        params.clear()
        params.update(new)
        prefix = f"{label}." if label else ""
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                changes[prefix + key] = {"from": old.get(key), "to": new.get(key)}

    validate = getattr(config, "validate_rope", None)
    if validate is not None:
        try:
            validate()
        except (KeyError, ValueError, TypeError) as exc:
            config.rope_parameters = backup
            raise ConfigError(f"invalid RoPE settings after override: {exc}", "check --rope-* values") from exc
    return changes
