"""A slow, exact float64 reference for every built-in variant (``check.check_model`` compares to it).

The reference shares nothing with the fused path but the module attributes it reads: it builds
the full (T_q, T_k) logits in float64, applies the variant's formula written out again here,
masks, and takes an explicit softmax. It is registered under its own name with a mask builder
that never takes transformers' "no mask, use is_causal" shortcut, so it always counts n from an
explicit mask, an independent check on the fused path's analytic n.

It is for tests and ``evalkit``'s self-check, never for real runs: memory is O(T_q * T_k).
"""

from __future__ import annotations

import math

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from evalkit.core.errors import ConfigError

IMPLEMENTATION = "evalkit_reference"
SCALARS = ("attn_scale", "floor_scale", "beta", "original_length")


def reference_factor(
    variant: str,
    n: torch.Tensor,  # (B, 1, T_q, 1) float64
    s: torch.Tensor | None,  # (H,)
    b: torch.Tensor | None,  # (H,)
    train_length: int | None,
    pos: torch.Tensor | None = None,  # (B|1, 1, T_q, 1) float64 absolute positions
    scalars: dict | None = None,  # attn_scale, floor_scale, beta, original_length
) -> torch.Tensor:
    """The design table's scale factor on q, in float64; broadcastable to (B, H, T_q, 1)."""
    log_n = torch.log(n)
    scalars = scalars or {}
    if variant == "llama4-temp":
        bucket = torch.floor((pos + 1) / float(scalars["floor_scale"]))
        return 1 + float(scalars["attn_scale"]) * torch.log(bucket + 1)
    if variant == "mistral-beta":
        bucket = torch.floor(pos / float(scalars["original_length"]))
        return 1 + float(scalars["beta"]) * torch.log(1 + bucket)
    if variant == "softmax":
        return torch.ones_like(n)
    if variant == "ssmax":
        return s.double().view(1, -1, 1, 1) * log_n
    if variant == "ssmax-bias":
        return s.double().view(1, -1, 1, 1) * log_n + b.double().view(1, -1, 1, 1)
    if variant == "logn":
        return torch.clamp(log_n / math.log(train_length), min=1.0)
    raise ConfigError(f"no float64 reference for attention variant {variant!r}", "add one here")


def reference_weights(
    query: torch.Tensor,  # (B, H, T_q, D)
    key: torch.Tensor,  # (B, H_kv, T_k, D)
    attention_mask: torch.Tensor | None = None,  # (B, 1, T_q, T_k) bool or additive
    *,
    variant: str = "softmax",
    s: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    train_length: int | None = None,
    n_mode: str = "position",
    scaling: float | None = None,
    is_causal: bool = True,
    position_ids: torch.Tensor | None = None,  # (B|1, T_q), for variants that count positions
    scalars: dict | None = None,
) -> torch.Tensor:
    """Exact attention weights, float64, (B, H, T_q, T_k); fully masked rows are all zero."""
    q, k = query.double(), key.double()
    batch, heads, q_len, dim = q.shape
    kv_len = k.shape[2]
    k = k.repeat_interleave(heads // k.shape[1], dim=1)  # (B, H, T_k, D): GQA
    scaling = dim**-0.5 if scaling is None else scaling

    bias = torch.zeros((), dtype=torch.float64)
    if attention_mask is None:
        # SDPA semantics without a mask: one query sees all keys; several use the
        # upper-left aligned causal pattern (key j visible to query i iff j <= i).
        rows = torch.arange(q_len)[:, None]
        cols = torch.arange(kv_len)[None, :]
        if is_causal and q_len > 1:
            allowed = (cols <= rows)[None, None]  # (1, 1, T_q, T_k)
        else:
            allowed = torch.ones(1, 1, q_len, kv_len, dtype=torch.bool)
        allowed = allowed.to(q.device)
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:
        allowed = attention_mask > torch.finfo(attention_mask.dtype).min / 2
        bias = attention_mask.double().masked_fill(~allowed, 0.0)

    if n_mode == "length":
        n = torch.full((1, 1, q_len, 1), float(kv_len), dtype=torch.float64, device=q.device)
    else:
        n = allowed.sum(-1, keepdim=True).double().clamp(min=1.0)  # (B, 1, T_q, 1)
    if position_ids is not None:
        pos = position_ids.double()[:, None, :, None]  # (B|1, 1, T_q, 1)
    else:  # models that do not pass position_ids on (Llama 4): keys visible - 1 in a full causal layer
        pos = allowed.sum(-1, keepdim=True).double().clamp(min=1.0) - 1.0  # (B|1, 1, T_q, 1)
    factor = reference_factor(variant, n, s, b, train_length, pos, scalars)  # (B, H, T_q, 1)

    logits = (factor * q) @ k.transpose(-1, -2) * scaling + bias  # (B, H, T_q, T_k)
    logits = logits.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(logits, dim=-1)
    return weights.nan_to_num(0.0)  # rows with no allowed key: zeros, as torch SDPA gives


def reference_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # (B, H, T_q, D)
    key: torch.Tensor,  # (B, H_kv, T_k, D)
    value: torch.Tensor,  # (B, H_kv, T_k, D)
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An AttentionInterface function: the module's variant, computed naively in float64."""
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    weights = reference_weights(
        query,
        key,
        attention_mask,
        variant=getattr(module, "evalkit_variant", "softmax"),
        s=getattr(module, "ssmax_s", None),
        b=getattr(module, "ssmax_b", None),
        train_length=getattr(module, "evalkit_train_length", None),
        n_mode=getattr(module, "evalkit_n_mode", "position"),
        scaling=scaling,
        is_causal=is_causal,
        position_ids=kwargs.get("position_ids"),
        scalars={name: getattr(module, f"evalkit_{name}", None) for name in SCALARS},
    )  # (B, H, T_q, T_k)
    v = value.double().repeat_interleave(query.shape[1] // value.shape[1], dim=1)  # (B, H, T_k, D)
    output = weights @ v  # (B, H, T_q, D)
    return output.transpose(1, 2).contiguous().to(query.dtype), weights.to(query.dtype)


def _explicit_mask(*args, **kwargs):
    """sdpa_mask that always returns a mask (never None), so n is always counted from it."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def register() -> None:
    """Register the reference under ``IMPLEMENTATION`` (idempotent)."""
    AttentionInterface.register(IMPLEMENTATION, reference_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, _explicit_mask)
