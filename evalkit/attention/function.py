"""The one attention function evalkit registers with transformers' ``AttentionInterface``.

transformers calls it as ``fn(module, query, key, value, attention_mask, dropout=, scaling=,
**kwargs)`` with (B, H, T, D) tensors, keys and values not yet repeated for GQA. It reads the
variant from attributes ``apply_attention`` sets on the attention module:

    module.evalkit_variant        str, a name in ``variants.VARIANTS``
    module.evalkit_n_mode         "position" | "length"
    module.evalkit_train_length   int | None (L for ``logn``); likewise evalkit_attn_scale,
                                  evalkit_floor_scale, evalkit_beta, evalkit_original_length
    module.ssmax_s, module.ssmax_b   (H,) tensors, buffers or nn.Parameters
    module.evalkit_probe          None, or a callable taking ``ProbeInputs``

then multiplies q by the variant's per-query, per-head factor (computed in float32, or in float64
when q is float64, then cast to q's dtype) and hands everything to transformers' own ``sdpa_attention_forward``.
Reusing that
function keeps GQA, ``is_causal`` dispatch and decoding fast paths exactly as stock sdpa, so
``softmax`` through evalkit is bit-identical to ``attn_implementation="sdpa"``.

How n (the number of keys query i may see) is found, without building anything larger than the
mask transformers already made:
- a 4D mask (bool, or additive float) is given: n_i = number of allowed keys in row i. This
  covers left padding, KV-cache offsets and sliding windows uniformly.
- no mask (transformers' causal fast path, only when nothing is padded): mirror what SDPA then
  does. One query (decoding): it sees all kv_len keys. Several queries: SDPA's ``is_causal`` is
  upper-left aligned (and ``sdpa_attention_forward`` crops keys to q_len when kv_len > q_len,
  which happens for a prefill into an empty StaticCache), so n_i = i + 1. When q_len == kv_len
  both equal the general (kv_len - q_len) + i + 1.
- n_mode "length": n = kv_len (the key length including masked keys) for every query.
n is clamped to >= 1 so fully masked rows (left-padding queries) give a finite factor.

Variants that count the absolute position instead (``Variant.counts == "position"``) read the
``position_ids`` transformers passes to the attention function: during cached decoding they
continue from the cache, and ``generate`` with left padding numbers the real tokens from 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from evalkit.attention.variants import get_variant
from evalkit.core.errors import ConfigError

IMPLEMENTATION = "evalkit"


def allowed_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """A bool 'may attend' tensor from a bool or additive float mask (same shape)."""
    if mask.dtype == torch.bool:
        return mask
    # Additive masks hold 0 (or a bias) where allowed and dtype-min or -inf where masked.
    return mask > torch.finfo(mask.dtype).min / 2


def causal_offset(q_len: int, kv_len: int, is_causal: bool) -> int | None:
    """When no mask is given: query i may see keys j <= i + offset (None: all keys).

    Mirrors ``sdpa_attention_forward``: a single query attends to everything (is_causal=False
    there); several queries use SDPA's upper-left aligned ``is_causal``.
    """
    if not is_causal or q_len == 1:
        return None
    return 0


def keys_per_query(
    attention_mask: torch.Tensor | None,
    q_len: int,
    kv_len: int,
    *,
    is_causal: bool,
    n_mode: str,
    device: torch.device,
) -> torch.Tensor:
    """n for every query: float32, shape (B or 1, 1 or H, T_q, 1), clamped to >= 1."""
    if n_mode == "length":
        return torch.full((1, 1, q_len, 1), float(kv_len), device=device)  # (1, 1, T_q, 1)
    if attention_mask is not None:
        # Count allowed keys per row; the result is T_k times smaller than the mask.
        n = allowed_from_mask(attention_mask).sum(-1, keepdim=True)  # (B, 1, T_q, 1)
        return n.to(torch.float32).clamp(min=1.0)
    offset = causal_offset(q_len, kv_len, is_causal)
    if offset is None:
        return torch.full((1, 1, q_len, 1), float(kv_len), device=device)
    n = torch.arange(1, q_len + 1, device=device, dtype=torch.float32) + offset  # (T_q,)
    return n.clamp(max=kv_len).view(1, 1, q_len, 1)  # (1, 1, T_q, 1)


@dataclass(frozen=True)
class ProbeInputs:
    """What one attention call hands a probe: enough to compute exact weights for a few rows.

    ``query`` already carries the variant's factor, so ``weights(rows)`` are the weights this
    layer really used. Memory stays linear in n: only the requested rows are formed.
    """

    layer_idx: int | None
    query: torch.Tensor  # (B, H, T_q, D), multiplied by the variant factor
    key: torch.Tensor  # (B, H, T_k, D), repeated for GQA
    scaling: float
    attention_mask: torch.Tensor | None  # (B, 1, T_q, T_k) bool/additive, or None (causal fast path)
    is_causal: bool
    n: torch.Tensor  # (B or 1, 1, T_q, 1) float32

    def allowed(self, rows: torch.Tensor) -> torch.Tensor:
        """Which keys each of ``rows`` may see: bool, (B or 1, 1, R, T_k)."""
        rows = rows.to(self.query.device)
        if self.attention_mask is not None:
            return allowed_from_mask(self.attention_mask[:, :, rows, :])
        q_len, kv_len = self.query.shape[2], self.key.shape[2]
        offset = causal_offset(q_len, kv_len, self.is_causal)
        keys = torch.arange(kv_len, device=rows.device)  # (T_k,)
        if offset is None:
            return torch.ones(1, 1, rows.numel(), kv_len, dtype=torch.bool, device=rows.device)
        return (keys[None, :] <= rows[:, None] + offset)[None, None]  # (1, 1, R, T_k)

    def weights(self, rows: torch.Tensor) -> torch.Tensor:
        """Exact attention weights of query ``rows``: float32, (B, H, R, T_k)."""
        rows = rows.to(self.query.device)
        q = self.query[:, :, rows, :].float()  # (B, H, R, D)
        logits = q @ self.key.float().transpose(-1, -2) * self.scaling  # (B, H, R, T_k)
        if self.attention_mask is not None and self.attention_mask.dtype != torch.bool:
            logits = logits + self.attention_mask[:, :, rows, :].float()  # additive bias
        logits = logits.masked_fill(~self.allowed(rows), float("-inf"))
        return torch.softmax(logits, dim=-1).nan_to_num(0.0)  # fully masked rows -> 0


def _full_causal_layer(module: torch.nn.Module) -> bool:
    """Whether every query of this layer sees all earlier keys (no sliding window, no chunks)."""
    config = getattr(module, "config", None)
    layer_types = getattr(config, "layer_types", None)
    kind = layer_types[module.layer_idx] if layer_types and getattr(module, "layer_idx", None) is not None else None
    return getattr(module, "sliding_window", None) is None and kind in (None, "full_attention")


def query_positions(
    position_ids: torch.Tensor | None,
    q_len: int,
    module: torch.nn.Module,
    *,
    attention_mask: torch.Tensor | None = None,
    kv_len: int | None = None,
    is_causal: bool = True,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Absolute 0-based positions of the queries: float32, (B or 1, 1, T_q, 1)."""
    if position_ids is None and kv_len is not None and _full_causal_layer(module):
        # Llama 4's decoder layers do not hand position_ids on. In a full causal layer a query's
        # position is the number of keys it may see, minus one: Llama 4's own count (arange +
        # past tokens), and with left padding the position among real tokens, as generate numbers them.
        n = keys_per_query(
            attention_mask, q_len, kv_len, is_causal=is_causal, n_mode="position", device=device
        )  # (B|1, 1, T_q, 1)
        return n - 1.0
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[-1] != q_len:
        shape = None if position_ids is None else tuple(position_ids.shape)
        raise ConfigError(
            f"attention variant {module.evalkit_variant!r} needs (batch, tokens) position_ids, but "
            f"{type(module).__name__} passes {shape} to its attention function",
            "use a variant that counts keys (ssmax, logn) with this model",
        )
    return position_ids.to(torch.float32)[:, None, :, None]  # (B|1, 1, T_q, 1)


def module_attribute(name: str) -> str:
    """Where ``apply_attention`` stores a variant parameter on the attention module."""
    return {"s": "ssmax_s", "b": "ssmax_b"}.get(name, f"evalkit_{name}")


def module_parameters(module: torch.nn.Module, names: tuple[str, ...]) -> dict[str, object]:
    """The variant's parameters as stored on the attention module by ``apply_attention``."""
    attrs = {name: module_attribute(name) for name in names}
    params = {}
    for name in names:
        value = getattr(module, attrs[name], None)
        if value is None:
            raise ConfigError(
                f"attention layer {getattr(module, 'layer_idx', '?')} uses variant "
                f"{module.evalkit_variant!r} but has no {attrs[name]}",
                "switch variants with evalkit.attention.apply_attention(model, ...)",
            )
        params[name] = value
    return params


def evalkit_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # (B, H, T_q, D)
    key: torch.Tensor,  # (B, H_kv, T_k, D)
    value: torch.Tensor,  # (B, H_kv, T_k, D)
    attention_mask: torch.Tensor | None,  # (B, 1, T_q, T_k) or None
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention with the module's variant; returns ((B, T_q, H, D), None) like stock sdpa."""
    variant = get_variant(getattr(module, "evalkit_variant", "softmax"))
    probe: Callable[[ProbeInputs], None] | None = getattr(module, "evalkit_probe", None)

    if variant.factor is not None or probe is not None:
        q_len, kv_len, num_heads = query.shape[2], key.shape[2], query.shape[1]
        is_causal = kwargs.get("is_causal")
        is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        n = keys_per_query(
            attention_mask,
            q_len,
            kv_len,
            is_causal=is_causal,
            n_mode=getattr(module, "evalkit_n_mode", "position"),
            device=query.device,
        )  # (B|1, 1, T_q, 1) float32
        if variant.factor is not None:
            params = module_parameters(module, variant.parameters)
            x = (
                n
                if variant.counts == "keys"
                else query_positions(
                    kwargs.get("position_ids"),
                    q_len,
                    module,
                    attention_mask=attention_mask,
                    kv_len=kv_len,
                    is_causal=is_causal,
                    device=query.device,
                )
            )
            # float32 at least, as bf16 rounds the factor itself badly; float64 in a float64 model,
            # where a float32 log n would be about 1e-7 off
            wide = x.double() if query.dtype == torch.float64 else x
            factor = variant.factor(wide, num_heads, params)  # (B|1, H, T_q, 1) float32 or float64
            query = query * factor.to(query.dtype)  # (B, H, T_q, D)
        if probe is not None:
            groups = num_heads // key.shape[1]
            probe(
                ProbeInputs(
                    layer_idx=getattr(module, "layer_idx", None),
                    query=query,
                    key=repeat_kv(key, groups),  # (B, H, T_k, D)
                    scaling=query.shape[-1] ** -0.5 if scaling is None else scaling,
                    attention_mask=attention_mask,
                    is_causal=is_causal,
                    n=n,
                )
            )

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def register() -> None:
    """Register the function and its mask builder with transformers (idempotent).

    Without the mask registration, transformers finds no mask function for "evalkit" and
    passes ``attention_mask=None``: padding would be silently ignored.
    """
    AttentionInterface.register(IMPLEMENTATION, evalkit_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
