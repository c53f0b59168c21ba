"""NoPE models (no positional encoding on some or all layers) under every attention variant.

SmolLM3 skips RoPE on the layers its config's ``no_rope_layers`` marks 0; with every entry 0 it
is a Llama with RoPE disabled. Tiny random float64 models of both kinds are built here and each
variant's logits are checked against evalkit's float64 reference attention (explicit logits,
mask and softmax, independent of the fused path), plainly and with left padding. An all-NoPE
model sees no positions at all, so variants that count keys must give the same logits when every
position id is shifted, and the variants that read the absolute position (llama4-temp,
mistral-beta) must not.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from evalkit.attention import VARIANTS, apply_attention, check_model, native_scaling

VOCAB = 300
TOKENS = 40
PARAMS = {
    "s": 0.4,
    "b": 0.2,
    "train_length": 16,
    "attn_scale": 0.5,
    "floor_scale": 8,
    "beta": 0.3,
    "original_length": 8,
}
MIXED, ALL_NOPE = [1, 0, 1, 0], [0, 0, 0, 0]  # SmolLM3 convention: 1 = the layer uses RoPE


def _smollm3(no_rope_layers, seed: int = 0, dtype=torch.float64):
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    torch.manual_seed(seed)
    config = SmolLM3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=len(no_rope_layers),
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        no_rope_layers=list(no_rope_layers),
        pad_token_id=0,
        eos_token_id=0,
        bos_token_id=0,
    )
    return SmolLM3ForCausalLM(config).eval().to(dtype)


def _params(variant: str) -> dict:
    return {k: v for k, v in PARAMS.items() if k in VARIANTS[variant].parameters}


@pytest.fixture(scope="module")
def ids():
    torch.manual_seed(1)
    return torch.randint(1, VOCAB, (2, TOKENS))


@pytest.mark.parametrize("layers", [MIXED, ALL_NOPE], ids=["mixed", "all-nope"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_matches_the_float64_reference(variant, layers, ids):
    model = _smollm3(layers)
    assert native_scaling(model) is None  # SmolLM3 ships no q scaling: native is the stock forward
    apply_attention(model, variant, **_params(variant))
    with torch.no_grad():
        assert check_model(model, ids)["max_abs_dev"] < 1e-10
        mask = torch.ones_like(ids)
        mask[1, :7] = 0  # left padding: the second row's real tokens start at 7
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        assert check_model(model, ids, attention_mask=mask, position_ids=positions)["max_abs_dev"] < 1e-10


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_all_nope_logits_ignore_a_shift_of_every_position_id(variant, ids):
    model = _smollm3(ALL_NOPE)
    apply_attention(model, variant, **_params(variant))
    positions = torch.arange(TOKENS).expand(2, -1)
    with torch.no_grad():
        plain = model(input_ids=ids, position_ids=positions).logits
        shifted = model(input_ids=ids, position_ids=positions + 100).logits
    gap = (plain - shifted).abs().max().item()
    if VARIANTS[variant].counts == "position":  # factor read from the absolute position: the shift must show
        assert gap > 1e-3
    else:
        assert gap < 1e-12


def test_the_variant_on_nope_layers_only_changes_only_those(ids):
    model = _smollm3(MIXED)
    with torch.no_grad():
        stock = model(input_ids=ids, output_hidden_states=True).hidden_states
        apply_attention(model, "ssmax", s=0.4, layers="nope")
        nope = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert [i for i, m in enumerate(model.model.layers) if m.self_attn.evalkit_variant == "ssmax"] == [1, 3]
    assert torch.equal(stock[1], nope[1])  # layer 0 (RoPE) output: untouched, bit for bit
    assert (stock[2] - nope[2]).abs().max() > 1e-5  # layer 1 (NoPE) output: SSMax changed it (float64: noise is 1e-16)


def test_a_nope_checkpoint_loads_and_runs_every_variant(tmp_path, tokenizer):
    from evalkit.run.evaluate import RunConfig, execute

    folder = tmp_path / "smollm3-nope"
    model = _smollm3(MIXED, dtype=torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    names = [v for v in VARIANTS if v != "ssmax-bias"]
    attention = tuple({"name": v, **_params(v), "layers": "nope"} for v in names)
    outcome = execute(
        RunConfig(
            "perplexity",
            str(folder),
            task_options={"lengths": "32", "samples": 2},
            attention=attention,
            out=str(tmp_path / "run"),
            device="cpu",
            quiet=True,
        )
    )
    nll = outcome.frame[outcome.frame.metric == "mean_nll"].groupby("attention").value.mean()
    assert set(nll.index) == set(names) and nll.notna().all()
    assert nll["native"] == pytest.approx(nll["softmax"], abs=1e-12)  # nothing native on SmolLM3
    assert abs(nll["ssmax"] - nll["softmax"]) > 1e-5  # float32 path noise is ~1e-7
    manifest = json.loads((outcome.folder / "manifest.json").read_text())
    assert {a["label"]: a["layers"] for a in manifest["attention"] if a["variant"] != "softmax"}["ssmax"] == "nope"
    assert isinstance(outcome.summary, pd.DataFrame)


@pytest.mark.parametrize(
    "shape,check",
    [
        ("smollm3-3b", lambda c: c.no_rope_layers == [1, 1, 1, 0]),
        ("llama4-scout-text", lambda c: c.no_rope_layers == [1, 1, 1, 0] and c.attn_temperature_tuning),
        ("ministral3-8b", lambda c: c.rope_parameters["llama_4_scaling_beta"] == 0.1),
    ],
)
def test_random_shapes_of_the_new_families(shape, check):
    """The shapes build with their family's class (on the meta device: no weights are made), with
    NoPE layers and native scalings where the family has them."""
    from evalkit.models import shapes

    config = shapes.shape_config(shape, layers=4)
    assert config.num_hidden_layers == 4 and check(config)
    import transformers

    with torch.device("meta"):
        model = getattr(transformers, shapes.FAMILIES[shapes.SHAPES[shape]["family"]][1])(config)
    found = native_scaling(model)
    expected = {"smollm3-3b": None, "llama4-scout-text": "llama4-temp", "ministral3-8b": "mistral-beta"}[shape]
    assert (found.variant if found else None) == expected
