"""Attention variants (softmax, SSMax, SSMax+bias, log-n) for transformers models.

Importing this package registers two attention implementations with transformers'
``AttentionInterface`` (and, under the same names, a mask builder with
``AttentionMaskInterface``; without it transformers would pass no padding mask):

- "evalkit": the fused path; the variant is a per-query, per-head factor on q, then torch SDPA.
- "evalkit_reference": a slow float64 reference for tests and ``check_model``.

Typical use::

    from evalkit.attention import apply_attention
    apply_attention(model, "ssmax", s=0.43)        # in place; returns the AttentionSpec
    apply_attention(model, "softmax")              # back to stock sdpa

Submodules: ``variants`` (registry and formulas), ``spec`` (AttentionSpec), ``function`` (the
registered function and the probe hook), ``native`` (scalings the checkpoint's own modelling
code applies: detect, switch off and on), ``apply`` (switching models, checkpoints), ``reference``
(float64 reference), ``check`` (check_model: fused vs reference), ``modules`` (finding attention
modules), ``rope`` (RoPE overrides).
"""

from evalkit.attention import function as _function
from evalkit.attention import reference as _reference
from evalkit.attention.apply import (
    CONFIG_KEY,
    apply_attention,
    head_tables,
    load_attention_from_checkpoint,
    load_param_table,
    spec_from_model,
)
from evalkit.attention.check import check_model
from evalkit.attention.function import IMPLEMENTATION, ProbeInputs, evalkit_attention_forward
from evalkit.attention.modules import attention_modules
from evalkit.attention.native import NativeScaling, native_enabled, native_scaling, set_native
from evalkit.attention.reference import reference_attention_forward, reference_weights
from evalkit.attention.rope import override_rope
from evalkit.attention.spec import AttentionSpec, RunVariant, parse_attention_list
from evalkit.attention.variants import VARIANTS, Variant, describe_variants, get_variant, register_variant


def register() -> None:
    """Register evalkit's attention functions with transformers (idempotent; done on import)."""
    _function.register()
    _reference.register()


register()

__all__ = [
    "CONFIG_KEY",
    "IMPLEMENTATION",
    "VARIANTS",
    "AttentionSpec",
    "NativeScaling",
    "ProbeInputs",
    "Variant",
    "RunVariant",
    "apply_attention",
    "attention_modules",
    "check_model",
    "describe_variants",
    "evalkit_attention_forward",
    "get_variant",
    "head_tables",
    "load_attention_from_checkpoint",
    "load_param_table",
    "native_enabled",
    "native_scaling",
    "override_rope",
    "parse_attention_list",
    "reference_attention_forward",
    "reference_weights",
    "register",
    "register_variant",
    "set_native",
    "spec_from_model",
]
