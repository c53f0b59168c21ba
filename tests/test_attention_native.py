"""Native scalings (Llama 4 temperature, Ministral 3 / Mistral 4 beta): detected, named, controlled.

Tiny random checkpoints of each family are built here. The references are independent: the
stock model as transformers builds it (``native``), and a second model built from a config with
the scaling switched off and the same weights (``softmax``, and ``ssmax`` replacing the scaling).
Small floor_scale / original_max_position_embeddings make the factors differ from 1 within
24 tokens, so a scaling left on (or stacked) would show.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_llama4

from evalkit.attention import apply_attention, native_enabled, native_scaling

VOCAB = 300
TOKENS = 24


def _llama4(temperature: bool = True, seed: int = 0):
    return make_llama4(VOCAB, seed=seed, temperature=temperature)


def _ministral3(beta: float = 0.3, seed: int = 0):
    from transformers import Ministral3Config, Ministral3ForCausalLM

    torch.manual_seed(seed)
    config = Ministral3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=32,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 8,
            "llama_4_scaling_beta": beta,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
        },
        pad_token_id=0,
        eos_token_id=0,
        bos_token_id=0,
    )
    return Ministral3ForCausalLM(config).eval()


def _mistral4(beta: float = 0.3, seed: int = 0):
    from transformers import Mistral4Config, Mistral4ForCausalLM

    torch.manual_seed(seed)
    config = Mistral4Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=2,
        num_experts_per_tok=1,
        n_group=1,
        topk_group=1,
        n_shared_experts=1,
        first_k_dense_replace=2,
        kv_lora_rank=16,
        q_lora_rank=None,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        head_dim=16,
        max_position_embeddings=32,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 8,
            "llama_4_scaling_beta": beta,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        pad_token_id=0,
        eos_token_id=0,
        bos_token_id=0,
    )
    return Mistral4ForCausalLM(config).eval()


FAMILIES = {
    "llama4": (
        lambda: _llama4(True),
        lambda: _llama4(False),
        "llama4-temp",
        {"attn_scale": 0.5, "floor_scale": 4},
        "nope",
        [1],
    ),
    "ministral3": (
        lambda: _ministral3(0.3),
        lambda: _ministral3(0.0),
        "mistral-beta",
        {"beta": 0.3, "original_length": 8},
        "all",
        [0, 1],
    ),
    "mistral4": (
        lambda: _mistral4(0.3),
        lambda: _mistral4(0.0),
        "mistral-beta",
        {"beta": 0.3, "original_length": 8},
        "all",
        [0, 1],
    ),
}


@pytest.fixture(scope="module")
def ids():
    generator = torch.Generator().manual_seed(1)
    return torch.randint(1, VOCAB, (2, TOKENS), generator=generator)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _pair(family):
    """(stock model with its scaling, the same weights in a model built with the scaling off)."""
    build_on, build_off, *_ = FAMILIES[family]
    on, off = build_on(), build_off()
    off.load_state_dict(on.state_dict())
    return on, off


@pytest.mark.parametrize("family", list(FAMILIES))
def test_native_scaling_is_detected_with_the_checkpoints_parameters(family):
    build_on, build_off, variant, params, layers, indices = FAMILIES[family]
    found = native_scaling(build_on())
    assert found is not None and found.variant == variant
    assert found.params == params
    assert (found.layers, list(found.layer_indices)) == (layers, indices)
    assert native_scaling(build_off()) is None  # flag off / beta 0: nothing native to control


def test_models_without_native_scaling_have_none():
    from tests.conftest import make_llama

    assert native_scaling(make_llama(VOCAB)) is None


@pytest.mark.parametrize("family", list(FAMILIES))
def test_native_is_the_stock_forward_and_softmax_removes_the_scaling(family, ids):
    on, off = _pair(family)
    stock = _logits(copy.deepcopy(on), ids)  # transformers' own forward, never touched by evalkit
    plain = _logits(off, ids)
    assert (stock - plain).abs().max() > 1e-3  # the scaling matters at these positions

    apply_attention(on, "softmax")
    assert not native_enabled(on)
    assert torch.equal(_logits(on, ids), plain)  # bit for bit the model built without the scaling
    apply_attention(on, "native")
    assert native_enabled(on)
    assert torch.equal(_logits(on, ids), stock)  # bit for bit the stock forward, restored


@pytest.mark.parametrize("family", list(FAMILIES))
def test_other_variants_replace_the_native_scaling(family, ids):
    on, off = _pair(family)
    apply_attention(on, "ssmax", s=0.4)
    apply_attention(off, "ssmax", s=0.4)
    assert torch.equal(_logits(on, ids), _logits(off, ids))  # ssmax alone, not ssmax on top of native
    apply_attention(on, "native")
    apply_attention(off, "softmax")
    assert not torch.equal(_logits(on, ids), _logits(off, ids))


@pytest.mark.parametrize("family", ["llama4", "ministral3"])
def test_the_matching_evalkit_variant_reproduces_the_native_scaling(family, ids):
    # evalkit's own llama4-temp / mistral-beta, with the detected parameters and layers, on the
    # model with its native scaling off, equals the stock forward (same factor, other code path)
    on, _ = _pair(family)
    stock = _logits(copy.deepcopy(on), ids)
    apply_attention(on, native_scaling(on).spec())
    assert not native_enabled(on)
    torch.testing.assert_close(_logits(on, ids), stock, rtol=0, atol=2e-5)


def test_saved_checkpoint_reloads_as_it_ran(tmp_path, ids):
    # a model saved under softmax has its scaling off in config.json; under native, on
    from transformers import AutoModelForCausalLM

    on, off = _pair("ministral3")
    apply_attention(on, "softmax")
    on.save_pretrained(tmp_path / "softmax")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "softmax", attn_implementation="sdpa").eval()
    assert native_scaling(reloaded) is None
    torch.testing.assert_close(_logits(reloaded, ids), _logits(off, ids), rtol=0, atol=1e-6)
    apply_attention(on, "native")
    assert on.config.rope_parameters["llama_4_scaling_beta"] == 0.3


def test_llama4_temp_runs_on_llama4_exactly(ids):
    # Llama 4's decoder layers do not pass position_ids to the attention function; llama4-temp
    # then counts positions as keys visible - 1 in its full causal NoPE layers. Fused path vs the
    # float64 reference, with left padding, and cached decoding vs one full forward.
    from transformers import DynamicCache

    from evalkit.attention import check_model

    model = _llama4(True).double()
    apply_attention(model, "llama4-temp", attn_scale=0.2, floor_scale=3, layers="nope")
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    assert check_model(model, ids)["max_abs_dev"] < 1e-10
    assert check_model(model, ids, attention_mask=mask)["max_abs_dev"] < 1e-10
    with torch.no_grad():
        full = model(ids[:1]).logits[0]  # (T, V)
        cache = DynamicCache(config=model.config)
        steps = [model(ids[:1, :16], cache=cache, use_cache=True).logits[0]]
        for t in range(16, TOKENS):
            steps.append(model(ids[:1, t : t + 1], cache=cache, use_cache=True).logits[0])
    torch.testing.assert_close(torch.cat(steps), full, rtol=0, atol=1e-10)
    stock = _llama4(True).double()  # and the factor is Llama 4's own: same parameters, stock forward
    stock.config.attn_scale = 0.2
    for layer in stock.model.layers:
        layer.self_attn.attn_scale, layer.self_attn.floor_scale = 0.2, 3
    # Llama 4 computes its factor in float32 (positions.float()), evalkit in float64 here: ~1e-8
    torch.testing.assert_close(_logits(model, ids[:1]), _logits(stock, ids[:1]), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def ministral3_checkpoint(tmp_path_factory):
    from transformers import Ministral3Config, Ministral3ForCausalLM

    from tests.conftest import make_tokenizer

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = Ministral3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 16.0,
            "original_max_position_embeddings": 32,
            "llama_4_scaling_beta": 0.3,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
        },
        pad_token_id=0,
        eos_token_id=0,
        bos_token_id=0,
        tie_word_embeddings=False,
    )
    folder = tmp_path_factory.mktemp("tiny-ministral3")
    Ministral3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_run_records_the_native_scaling_and_each_variants_use_of_it(ministral3_checkpoint, tmp_path):
    import json

    import pandas as pd
    from typer.testing import CliRunner

    import cli

    out = tmp_path / "run"
    args = [
        "run",
        "needle",
        "--model",
        str(ministral3_checkpoint),
        "--lengths",
        "128",
        "--depths",
        "0,100",
        "--trials",
        "1",
        "--attention",
        "auto,softmax,ssmax,mistral-beta",
        "--ssmax-s",
        "0.43",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
    ]
    result = CliRunner().invoke(cli.register_tasks(), args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    native = manifest["model"]["native_scaling"]
    assert (native["variant"], native["beta"], native["original_length"], native["layer_indices"]) == (
        "mistral-beta",
        0.3,
        32,
        [0, 1],
    )
    by_label = {a["label"]: a for a in manifest["attention"]}
    assert set(by_label) == {"native", "softmax", "ssmax", "mistral-beta"}  # auto = native on this checkpoint
    assert by_label["native"]["native_scaling"]["active"] is True
    assert all(by_label[k]["native_scaling"]["active"] is False for k in ("softmax", "ssmax", "mistral-beta"))
    # mistral-beta takes the checkpoint's beta and original length, not max_position_embeddings
    assert (by_label["mistral-beta"]["beta"], by_label["mistral-beta"]["original_length"]) == (0.3, 32)
    frame = pd.read_parquet(out / "results.parquet")
    logprob = frame[frame.metric == "answer_logprob"].pivot_table(
        index=["context_length", "depth"], columns="attention", values="value"
    )
    # evalkit's mistral-beta with the detected parameters is the native scaling, through evalkit's code
    assert (logprob["mistral-beta"] - logprob["native"]).abs().max() < 1e-4
    assert (logprob["softmax"] - logprob["native"]).abs().max() > 1e-5  # and softmax really is without it
