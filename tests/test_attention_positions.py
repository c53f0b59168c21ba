"""The position-scaled variants (llama4-temp, mistral-beta) and --attention-layers.

The formulas are checked against transformers' own code and hand-computed values; the fused path
against the float64 reference (``evalkit_reference``: full logits, explicit softmax) in a float64
model, to 1e-10, for plain causal input, left padding and cached decoding one token at a time.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache
from typer.testing import CliRunner

import cli
from evalkit.attention import CONFIG_KEY, apply_attention, get_variant, load_attention_from_checkpoint, spec_from_model
from evalkit.core.errors import ConfigError
from tests.test_attention import left_padding_mask, logits, tiny_model, token_ids

EXACT = 1e-10
# small floor/original lengths so a 20-token input crosses several buckets, a large scale so a
# wrong factor moves the logits by far more than the tolerance
CASES = {
    "llama4-temp": dict(attn_scale=0.5, floor_scale=4),
    "mistral-beta": dict(beta=0.6, original_length=5),
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def float64_model(name: str, layers: int = 2):
    model = tiny_model(layers).double()
    apply_attention(model, name, **CASES[name])
    return model


def real_positions(mask: torch.Tensor) -> torch.Tensor:
    """position_ids as ``generate`` builds them: real tokens numbered from 0, padding at 0."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


# --- the formulas ---------------------------------------------------------------------------


def test_mistral_beta_matches_transformers_get_llama_4_attn_scale():
    from transformers.models.ministral3.modeling_ministral3 import get_llama_4_attn_scale

    positions = torch.arange(0, 200).view(1, -1)  # (1, T)
    ours = get_variant("mistral-beta").factor(
        positions.float()[:, None, :, None], 3, {"beta": 0.1, "original_length": 16}
    )
    theirs = get_llama_4_attn_scale(positions, 0.1, 16)  # (1, 1, T, 1)
    assert ours.shape == (1, 3, 200, 1)
    torch.testing.assert_close(ours, theirs.expand_as(ours), atol=1e-7, rtol=0)
    assert ours[0, 0, 15, 0] == 1.0 and ours[0, 0, 16, 0].item() == pytest.approx(1 + 0.1 * math.log(2))


def test_llama4_temp_matches_the_hand_formula():
    # floor((pos + 1) / 16): 0 up to pos 14, 1 from pos 15 (the 16th token), 2 from pos 31
    positions = torch.tensor([0.0, 14.0, 15.0, 30.0, 31.0, 8191.0]).view(1, 1, -1, 1)
    factor = get_variant("llama4-temp").factor(positions, 2, {"attn_scale": 0.1, "floor_scale": 16})
    expected = [1 + 0.1 * math.log(math.floor((p + 1) / 16) + 1) for p in positions.flatten().tolist()]
    assert factor[0, 1, :, 0].tolist() == pytest.approx(expected, abs=1e-7)
    assert expected[:2] == [1.0, 1.0] and expected[2] > 1.0


def test_defaults_fill_from_variant_and_model():
    model = tiny_model()
    spec = apply_attention(model, "llama4-temp")
    assert (spec.attn_scale, spec.floor_scale) == (0.1, 8192)
    spec = apply_attention(model, "mistral-beta")
    assert (spec.beta, spec.original_length) == (0.1, 512)  # max_position_embeddings
    assert model.model.layers[1].self_attn.evalkit_original_length == 512
    with pytest.raises(ConfigError, match="--floor-scale must be > 0"):
        apply_attention(model, "llama4-temp", floor_scale=0)
    with pytest.raises(ConfigError, match="--original-length must be an integer"):
        apply_attention(model, "mistral-beta", original_length=2.5)


# --- fused path == float64 reference, to 1e-10 ----------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_causal_and_left_padded_match_reference(name):
    model = float64_model(name)
    ids = token_ids(3, 20)
    causal = logits(model, "evalkit", input_ids=ids)
    torch.testing.assert_close(causal, logits(model, "evalkit_reference", input_ids=ids), atol=EXACT, rtol=0)
    model.set_attn_implementation("sdpa")
    assert (causal - logits(model, input_ids=ids)).abs().max() > 1e-2  # the variant does change the logits

    mask = left_padding_mask([20, 13, 7], 20)
    inputs = dict(input_ids=ids, attention_mask=mask, position_ids=real_positions(mask))
    padded = logits(model, "evalkit", **inputs)
    keep = mask.bool()
    torch.testing.assert_close(padded[keep], logits(model, "evalkit_reference", **inputs)[keep], atol=EXACT, rtol=0)
    # positions among the real tokens: a padded row equals the same tokens run alone
    alone = logits(model, "evalkit", input_ids=ids[2:, 13:])
    torch.testing.assert_close(padded[2, 13:], alone[0], atol=EXACT, rtol=0)


def _decode(model, impl, ids, mask, new_tokens):
    """Prefill, then one token at a time through a KV cache, positions continuing per row."""
    import inspect

    model.set_attn_implementation(impl)
    cache = DynamicCache(config=model.config)
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    positions = real_positions(mask)
    steps = []
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{name: cache})
        steps.append(out.logits[:, -1])
        for token in new_tokens.T:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            out = model(
                input_ids=token[:, None], attention_mask=mask, position_ids=positions, use_cache=True, **{name: cache}
            )
            steps.append(out.logits[:, -1])
    return torch.stack(steps, dim=1)  # (B, steps, V)


@pytest.mark.parametrize("name", list(CASES))
def test_cached_decoding_matches_reference_and_full_forward(name):
    model = float64_model(name)
    ids, new = token_ids(2, 9), token_ids(2, 8, seed=2)
    unpadded = torch.ones_like(ids)
    fused = _decode(model, "evalkit", ids, unpadded, new)
    torch.testing.assert_close(fused, _decode(model, "evalkit_reference", ids, unpadded, new), atol=EXACT, rtol=0)
    # the decoded positions 9..16 cross buckets; the cache must not reset them to 0
    full = logits(model, "evalkit", input_ids=torch.cat([ids, new], dim=1))[:, ids.shape[1] - 1 :]
    torch.testing.assert_close(fused, full, atol=EXACT, rtol=0)

    mask = left_padding_mask([9, 4], 9)
    fused = _decode(model, "evalkit", ids, mask, new)
    torch.testing.assert_close(fused, _decode(model, "evalkit_reference", ids, mask, new), atol=EXACT, rtol=0)


def test_generate_with_left_padding_matches_reference():
    model = float64_model("mistral-beta")
    ids, mask = token_ids(2, 10), left_padding_mask([10, 6], 10)
    runs = {}
    for impl in ("evalkit", "evalkit_reference"):
        model.set_attn_implementation(impl)
        runs[impl] = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=6,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    assert torch.equal(runs["evalkit"].sequences, runs["evalkit_reference"].sequences)
    torch.testing.assert_close(
        torch.stack(runs["evalkit"].logits, 1), torch.stack(runs["evalkit_reference"].logits, 1), atol=EXACT, rtol=0
    )


# --- --attention-layers -----------------------------------------------------------------------


def _attention_outputs(model, ids) -> dict[int, torch.Tensor]:
    """Each layer's attention output (after o_proj), captured by forward hooks."""
    outputs, handles = {}, []
    for index, layer in enumerate(model.model.layers):
        hook = lambda module, args, out, index=index: outputs.__setitem__(index, out[0].detach().clone())  # noqa: E731
        handles.append(layer.self_attn.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=ids)
    for handle in handles:
        handle.remove()
    return outputs


def test_layer_selection_touches_only_the_named_layers():
    ids = token_ids(2, 20)
    stock = _attention_outputs(tiny_model().double(), ids)
    model = tiny_model().double()
    spec = apply_attention(model, "llama4-temp", layers=[1], **CASES["llama4-temp"])
    assert spec.layers == "1" and model.config.evalkit_attention["layer_indices"] == [1]
    fused = _attention_outputs(model, ids)
    assert torch.equal(fused[0], stock[0])  # layer 0: plain softmax, bit for bit
    model.set_attn_implementation("evalkit_reference")
    naive = _attention_outputs(model, ids)
    torch.testing.assert_close(fused[1], naive[1], atol=EXACT, rtol=0)  # layer 1: the naive scaled one
    assert (fused[1] - stock[1]).abs().max() > 1e-3  # and it is scaled


def test_nope_and_rope_follow_no_rope_layers_and_round_trip(tmp_path):
    from transformers import SmolLM3Config, SmolLM3ForCausalLM

    torch.manual_seed(0)
    config = SmolLM3Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=101,
        max_position_embeddings=512,
        no_rope_layers=[1, 0, 1, 0],
        initializer_range=0.1,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = SmolLM3ForCausalLM(config).eval()
    layers = model.model.layers
    apply_attention(model, "mistral-beta", layers="nope", beta=0.6, original_length=5)
    assert [layer.self_attn.evalkit_variant for layer in layers] == ["softmax", "mistral-beta"] * 2
    apply_attention(model, "mistral-beta", layers="rope", beta=0.6, original_length=5)
    assert [layer.self_attn.evalkit_variant for layer in layers] == ["mistral-beta", "softmax"] * 2
    ids = token_ids(1, 16)
    before = logits(model, input_ids=ids)

    model.save_pretrained(tmp_path)
    record = json.loads((tmp_path / "config.json").read_text())[CONFIG_KEY]
    assert (record["layers"], record["layer_indices"], record["original_length"]) == ("rope", [0, 2], 5)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert load_attention_from_checkpoint(reloaded, tmp_path) == spec_from_model(model)
    torch.testing.assert_close(logits(reloaded, input_ids=ids), before, atol=1e-6, rtol=0)


def test_bad_layer_selections_are_one_line_errors():
    with pytest.raises(ConfigError, match="needs the config's no_rope_layers"):
        apply_attention(tiny_model(), "llama4-temp", layers="nope")
    with pytest.raises(ConfigError, match="names layer 5, but the model has 2"):
        apply_attention(tiny_model(), "llama4-temp", layers="0,5")
    with pytest.raises(ConfigError, match="bad --attention-layers"):
        apply_attention(tiny_model(), "llama4-temp", layers="first")


# --- the CLI ----------------------------------------------------------------------------------

runner = CliRunner()
APP = cli.register_tasks()


def test_attention_list_shows_the_position_variants():
    result = runner.invoke(APP, ["attention", "list"], terminal_width=250)
    assert result.exit_code == 0, result.output
    for text in (
        "llama4-temp",
        "mistral-beta",
        "absolute position",
        "--floor-scale=8192",
        "--beta=0.1",
        "keys visible",
    ):
        assert text in result.output


def test_needle_run_writes_rows_per_variant(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    args = [
        "run",
        "needle",
        "--model",
        str(tiny_checkpoint),
        "--lengths",
        "96",
        "--depths",
        "0,100",
        "--trials",
        "1",
        "--attention",
        "softmax,llama4-temp,mistral-beta",
        "--floor-scale",
        "16",
        "--original-length",
        "32",
        "--attention-layers",
        "1",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
    ]
    result = runner.invoke(APP, args)
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out / "results.parquet")
    counts = frame.groupby("attention").size()
    assert set(counts.index) == {"softmax", "llama4-temp", "mistral-beta"}
    assert counts.nunique() == 1  # the same samples for every variant
    manifest = json.loads((out / "manifest.json").read_text())
    by_variant = {a["variant"]: a for a in manifest["attention"]}
    assert by_variant["llama4-temp"]["floor_scale"] == 16 and by_variant["llama4-temp"]["attn_scale"] == 0.1
    assert by_variant["mistral-beta"]["original_length"] == 32 and by_variant["mistral-beta"]["beta"] == 0.1
    assert by_variant["mistral-beta"]["layers"] == "1" and by_variant["softmax"]["layers"] == "all"


def test_attention_layers_nope_on_a_plain_llama_exits_2(tiny_checkpoint, tmp_path):
    args = [
        "run",
        "needle",
        "--model",
        str(tiny_checkpoint),
        "--lengths",
        "96",
        "--depths",
        "0",
        "--trials",
        "1",
        "--attention",
        "llama4-temp",
        "--attention-layers",
        "nope",
        "--out",
        str(tmp_path / "r"),
        "--device",
        "cpu",
        "--quiet",
    ]
    result = runner.invoke(APP, args)
    assert result.exit_code == 2, result.output
    assert "no_rope_layers" in result.output and "Traceback" not in result.output
