"""``check_model``: a model's logits through the fused evalkit path against the float64 reference.

Above both ``apply`` and ``reference`` (it switches the model between them), so neither imports the other.
"""

from __future__ import annotations

import torch

from evalkit.attention.apply import apply_attention, spec_from_model
from evalkit.attention.function import IMPLEMENTATION as FUSED
from evalkit.attention.reference import IMPLEMENTATION


@torch.no_grad()
def check_model(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    spec=None,
    *,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> dict[str, object]:
    """Run ``model`` through the fused evalkit path and the float64 reference; compare logits.

    ``spec`` (an ``AttentionSpec``), if given, is applied to the model first, in place. Returns
    ``max_abs_dev`` / ``mean_abs_dev`` of the logits over unmasked positions, plus
    ``max_abs_logit`` for scale, the variant and the number of positions compared.
    """
    if spec is not None:
        apply_attention(model, spec)
    spec = spec_from_model(model)
    before = model.config._attn_implementation

    outputs = {}
    try:
        for impl in (FUSED, IMPLEMENTATION):
            model.set_attn_implementation(impl)
            logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
            outputs[impl] = logits.double()  # (B, T, V)
    finally:
        model.set_attn_implementation(before)

    keep = torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)
    if attention_mask is not None:
        keep = attention_mask.bool()
    dev = (outputs[FUSED] - outputs[IMPLEMENTATION]).abs()[keep]  # (N, V)
    return {
        "variant": spec.variant,
        "n_mode": spec.n_mode,
        "max_abs_dev": dev.max().item(),
        "mean_abs_dev": dev.mean().item(),
        "max_abs_logit": outputs[IMPLEMENTATION][keep].abs().max().item(),
        "positions": int(keep.sum().item()),
    }
