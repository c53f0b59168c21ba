"""Position schemes of the reference models: RoPE everywhere, none (NoPE), or local RoPE + global NoPE.

- ``rope``: a ``LlamaForCausalLM`` with RoPE on every layer (the original reference pair).
- ``nope``: a ``SmolLM3ForCausalLM`` with ``no_rope_layers`` all 0: no layer rotates q and k,
  so the only position signal is the causal mask (Kazemnejad et al. 2023).
- ``irope``: a ``SmolLM3ForCausalLM`` whose layers follow ``pattern`` (repeated to the layer
  count): ``l`` = local, RoPE plus a sliding window of ``window`` keys (``layer_types``
  "sliding_attention"), ``g`` = global, NoPE and full causal attention. A local layer never
  meets a relative position it did not see in training as long as ``window`` <= the training
  length; a global layer has no position to extrapolate, only attention to spread thinner. This is
  Llama 4's interleaving (there with chunked attention); SmolLM3 is the architecture transformers
  ships with both ``no_rope_layers`` and per-layer sliding windows on plain dense layers.

SmolLM3 follows the Llama 4 / SmolLM3 convention ``no_rope_layers[i] == 1`` = layer i uses RoPE,
which evalkit's ``--attention-layers nope|rope`` reads; the SSMax model of an irope pair has SSMax
on its global (NoPE) layers only (``SSMAX_LAYERS``), the local layers see at most ``window`` keys.
The checkpoints are plain transformers folders: ``AutoModelForCausalLM`` loads them, sliding
windows and NoPE layers included, and evalkit reads the SSMax record like any other.
"""

from __future__ import annotations

from evalkit.core.errors import ConfigError

POSITIONS = ("rope", "nope", "irope")
# Where the SSMax model puts SSMax: every layer, except in irope where the local layers see at most
# `window` keys (nothing to dilute) and only the global NoPE layers face growing context.
SSMAX_LAYERS = {"rope": "all", "nope": "all", "irope": "nope"}


def check_positions(positions: str, pattern: str, window: int | None, train_length: int) -> None:
    if positions not in POSITIONS:
        raise ConfigError(f"unknown --positions {positions!r}", f"use one of {', '.join(POSITIONS)}")
    if not pattern or set(pattern) - {"l", "g"}:
        raise ConfigError(f"bad layer pattern {pattern!r}", "give letters l (local RoPE) and g (global NoPE), e.g. lg")
    if positions == "irope" and ("l" not in pattern or "g" not in pattern):
        raise ConfigError(
            f"layer pattern {pattern!r} has no {'local' if 'l' not in pattern else 'global'} layer",
            "an irope pattern needs both l and g, e.g. lg",
        )
    if window is not None and not 1 <= window <= train_length:
        raise ConfigError(
            f"local window {window} is outside 1..{train_length} (the training length)",
            "a local layer must never see a relative position longer than the training length",
        )


def layer_kinds(positions: str, pattern: str, layers: int) -> list[str]:
    """Per layer: "rope" (full causal RoPE), "nope" (full causal, no RoPE) or "local" (RoPE, window)."""
    if positions == "rope":
        return ["rope"] * layers
    if positions == "nope":
        return ["nope"] * layers
    return ["local" if pattern[i % len(pattern)] == "l" else "nope" for i in range(layers)]


def model_config(recipe, *, vocab_size: int, eos_id: int):
    """The transformers config of the recipe's model under its position scheme."""
    from transformers import LlamaConfig, SmolLM3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=recipe.width,
        intermediate_size=recipe.mlp_ratio * recipe.width,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.heads,
        max_position_embeddings=recipe.max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": float(recipe.rope_theta)},
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=False,
        initializer_range=recipe.init_std,
    )
    if recipe.positions == "rope":
        return LlamaConfig(**common, attn_implementation="sdpa")
    kinds = layer_kinds(recipe.positions, recipe.pattern, recipe.layers)
    window = recipe.local_window
    return SmolLM3Config(
        **common,
        no_rope_layers=[int(k != "nope") for k in kinds],
        use_sliding_window="local" in kinds,
        sliding_window=window if "local" in kinds else None,
        layer_types=["sliding_attention" if k == "local" else "full_attention" for k in kinds],
        attn_implementation="sdpa",
    )
