"""Random-weight checkpoints of well-known shapes, for speed measurements.

Speed does not depend on the weights, and a 1B checkpoint is neither on PyPI nor small enough to
carry to a lent GPU; so ``evalkit models random --shape llama-1b`` writes a folder with that
architecture's exact config, random weights and a real tokenizer, which every command (``bench``
included, and lm-eval through it) loads like any checkpoint. Quality numbers from it mean nothing.
"""

from __future__ import annotations

from pathlib import Path

from evalkit.core.errors import ConfigError, did_you_mean

# Published configs (config.json of each model), as Llama-architecture settings.
SHAPES = {
    "llama-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    ),  # Llama 3.2 1B (without its llama3 RoPE scaling: same cost)
    "llama-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    ),  # Llama 3.1 8B
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        vocab_size=49152,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    ),
    # Families with their own modelling code: the published config is transformers' config class
    # default (its docstring names the checkpoint), so only the family is given here; --layers
    # shortens the model and the class re-derives its per-layer lists (no_rope_layers, moe_layers).
    "smollm3-3b": dict(family="smollm3"),  # SmolLM3-3B: NoPE on every 4th layer (no_rope_layers)
    "llama4-scout-text": dict(
        family="llama4"
    ),  # Llama 4 Scout 17B-16E text: MoE, NoPE every 4th layer, temperature tuning
    "ministral3-8b": dict(family="ministral3"),  # Ministral 3 text: YaRN from 16k, llama_4_scaling_beta 0.1
}
# family -> (config class, causal LM class) in transformers
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM"),
    "llama4": ("Llama4TextConfig", "Llama4ForCausalLM"),
    "ministral3": ("Ministral3Config", "Ministral3ForCausalLM"),
}


def shape_config(shape: str, layers: int | None = None, **extra):
    """The transformers config of ``shape`` (with ``layers`` layers if given)."""
    import transformers

    settings = dict(SHAPES[shape])
    config_class, _ = FAMILIES[settings.pop("family", "llama")]
    return getattr(transformers, config_class)(
        **{**settings, **({"num_hidden_layers": layers} if layers else {})}, **extra
    )


def write_random_checkpoint(
    shape: str,
    tokenizer_spec: str,
    out: str | Path,
    *,
    layers: int | None = None,
    dtype: str = "bfloat16",
    seed: int = 0,
    log=print,
) -> Path:
    """A checkpoint folder of ``shape`` with random weights and the tokenizer of ``tokenizer_spec``."""
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    from evalkit.models.loading import load_tokenizer_only

    hf_logging.disable_progress_bar()

    if shape not in SHAPES:
        raise ConfigError(f"unknown shape {shape!r}", f"{did_you_mean(shape, SHAPES)}use one of {', '.join(SHAPES)}")
    if layers is not None and layers < 1:
        raise ConfigError(f"bad --layers {layers}", "give at least 1")
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ConfigError(f"bad dtype {dtype!r}", "use bfloat16, float16 or float32")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty", "give a new folder for the checkpoint")
    tokenizer = load_tokenizer_only(tokenizer_spec, log=log)
    special = {k: getattr(tokenizer, f"{k}_id", None) for k in ("bos_token", "eos_token", "pad_token")}
    config = shape_config(
        shape,
        layers,
        **{f"{k}_id": v for k, v in special.items() if v is not None},
        torch_dtype=dtype,
        evalkit_random_shape=shape,
    )
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens, more than the {shape} vocabulary ({config.vocab_size})",
            "use a tokenizer with a smaller vocabulary",
        )
    torch.manual_seed(seed)
    log(f"building {shape} ({config.num_hidden_layers} layers) with random weights ...")
    with torch.device("meta"):
        model = getattr(transformers, FAMILIES[SHAPES[shape].get("family", "llama")][1])(config)
    model = model.to_empty(device="cpu").to(getattr(torch, dtype))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, config.initializer_range)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    log(f"wrote {out} ({sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, {dtype})")
    return out
