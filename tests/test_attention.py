"""Tests for evalkit.attention: every variant against an independent float64 reference.

The model is a tiny random Llama with GQA (4 query heads, 2 KV heads), built here: no hub.
initializer_range=0.1 makes attention peaky enough that variants change the logits by O(1),
so a wrong n or factor cannot hide under the tolerance. The reference ("evalkit_reference")
always counts n from an explicit mask, while the fused path uses transformers' fast paths
(no mask for unpadded causal input and for decoding), so agreement checks both.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, LlamaForCausalLM

from evalkit.attention import (
    CONFIG_KEY,
    AttentionSpec,
    apply_attention,
    check_model,
    describe_variants,
    evalkit_attention_forward,
    load_attention_from_checkpoint,
    override_rope,
    parse_attention_list,
    reference_weights,
    spec_from_model,
)
from evalkit.core.errors import ConfigError

ATOL = 1e-5
HEAD_S = [[0.2, 0.5, 0.9, 1.3], [1.1, 0.4, 0.7, 0.3]]  # (layers, heads), differing per head
HEAD_B = [[0.1, -0.2, 0.3, 0.0], [0.0, 0.25, -0.1, 0.2]]

VARIANT_CASES = {
    "softmax": dict(variant="softmax"),
    "ssmax": dict(variant="ssmax", s=0.6),
    "ssmax-per-head": dict(variant="ssmax", s=HEAD_S),
    "ssmax-bias-per-head": dict(variant="ssmax-bias", s=HEAD_S, b=HEAD_B),
    "logn": dict(variant="logn", train_length=6),
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine the thread pool's
    contention made these tests 50x slower (6 s instead of 0.1 s for a decode loop)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(layers: int = 2, **overrides) -> LlamaConfig:
    settings = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=101,
        max_position_embeddings=512,
        initializer_range=0.1,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def tiny_model(layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(layers)).eval()


def apply_case(model, case: dict) -> None:
    case = dict(case)
    apply_attention(model, case.pop("variant"), **case)


def token_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 101, (batch, length), generator=generator)


def left_padding_mask(lengths: list[int], total: int) -> torch.Tensor:
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, total - length :] = 1
    return mask


def logits(model, impl: str | None = None, **inputs) -> torch.Tensor:
    if impl is not None:
        model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(**inputs).logits


# --- fused path == float64 reference -------------------------------------------------------


@pytest.mark.parametrize("case", list(VARIANT_CASES))
def test_variant_matches_reference_on_causal_input(case):
    model = tiny_model()
    apply_case(model, VARIANT_CASES[case])
    report = check_model(model, token_ids(2, 20))
    assert report["variant"] == VARIANT_CASES[case]["variant"]
    assert report["max_abs_dev"] < ATOL, report


@pytest.mark.parametrize("case", list(VARIANT_CASES))
def test_variant_matches_reference_with_left_padding(case):
    model = tiny_model()
    apply_case(model, VARIANT_CASES[case])
    mask = left_padding_mask([20, 13, 7], 20)
    report = check_model(model, token_ids(3, 20), attention_mask=mask)
    assert report["positions"] == 40
    assert report["max_abs_dev"] < ATOL, report


def test_left_padding_counts_only_unpadded_keys():
    # RoPE is relative, so a left-padded row equals the same tokens run alone, but only if
    # n_i counts the unpadded keys (i + 1 within the row), not the padded row length.
    model = tiny_model()
    apply_attention(model, "ssmax", s=HEAD_S)
    ids = token_ids(2, 16)
    mask = left_padding_mask([16, 9], 16)
    padded = logits(model, input_ids=ids, attention_mask=mask)
    alone = logits(model, input_ids=ids[1:, 7:])
    torch.testing.assert_close(padded[1, 7:], alone[0], atol=ATOL, rtol=0)

    seen = []
    model.model.layers[0].self_attn.evalkit_probe = lambda inputs: seen.append(inputs.n)
    logits(model, input_ids=ids, attention_mask=mask)
    expected = torch.tensor([list(range(1, 17)), [1] * 7 + list(range(1, 10))], dtype=torch.float32)
    torch.testing.assert_close(seen[0][:, 0, :, 0], expected)  # pad rows clamp to 1


def _decode(model, impl, ids, mask, new_tokens):
    """Prefill then feed fixed tokens one at a time through a KV cache; last-position logits."""
    model.set_attn_implementation(impl)
    import inspect

    cache = DynamicCache(config=model.config)
    # transformers 5.24 renamed past_key_values= to cache=; use whichever this release takes, as the adapter does
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    steps = []
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, **{name: cache})
        steps.append(out.logits[:, -1])
        for token in new_tokens.T:
            if mask is not None:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=token[:, None], attention_mask=mask, use_cache=True, **{name: cache})
            steps.append(out.logits[:, -1])
    return torch.stack(steps, dim=1)  # (B, steps, V)


@pytest.mark.parametrize("case", ["ssmax-per-head", "ssmax-bias-per-head", "logn"])
def test_kv_cache_decoding_matches_reference_and_full_forward(case):
    model = tiny_model()
    apply_case(model, VARIANT_CASES[case])
    ids, new = token_ids(2, 9), token_ids(2, 5, seed=2)
    fused = _decode(model, "evalkit", ids, None, new)
    reference = _decode(model, "evalkit_reference", ids, None, new)
    torch.testing.assert_close(fused, reference, atol=ATOL, rtol=0)
    # n during decoding = cache length + 1, exactly what the same position sees without a cache
    full = logits(model, "evalkit", input_ids=torch.cat([ids, new], dim=1))[:, ids.shape[1] - 1 :]
    torch.testing.assert_close(fused, full, atol=ATOL, rtol=0)

    mask = left_padding_mask([9, 4], 9)
    fused = _decode(model, "evalkit", ids, mask, new)
    reference = _decode(model, "evalkit_reference", ids, mask, new)
    torch.testing.assert_close(fused, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_with_padding_matches_reference(cache):
    # A StaticCache prefill reaches the attention with no mask, q_len < kv_len (the cache size)
    # and SDPA's upper-left is_causal: n_i = i + 1 there, not (kv_len - q_len) + i + 1.
    model = tiny_model()
    apply_attention(model, "ssmax-bias", s=HEAD_S, b=HEAD_B)
    ids, mask = token_ids(2, 10), left_padding_mask([10, 6], 10)
    if cache == "static":
        mask = None  # unpadded: the no-mask prefill path
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
            cache_implementation=cache,
        )
    assert torch.equal(runs["evalkit"].sequences, runs["evalkit_reference"].sequences)
    fused = torch.stack(runs["evalkit"].logits, dim=1)
    reference = torch.stack(runs["evalkit_reference"].logits, dim=1)
    torch.testing.assert_close(fused, reference, atol=ATOL, rtol=0)


def test_sliding_window_layers_count_at_most_window_keys():
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(**{**tiny_config().to_dict(), "sliding_window": 5, "model_type": "mistral"})
    model = MistralForCausalLM(config).eval()
    apply_attention(model, "ssmax", s=0.8)
    seen = []
    model.model.layers[0].self_attn.evalkit_probe = lambda inputs: seen.append(inputs.n)
    report = check_model(model, token_ids(1, 12))
    assert report["max_abs_dev"] < ATOL, report
    expected = torch.tensor([min(i + 1, 5) for i in range(12)], dtype=torch.float32)
    torch.testing.assert_close(seen[0][0, 0, :, 0], expected)


# --- softmax and the math -------------------------------------------------------------------


def test_softmax_through_evalkit_equals_stock_sdpa():
    model = tiny_model()
    ids, mask = token_ids(2, 16), left_padding_mask([16, 11], 16)
    stock = logits(model, input_ids=ids, attention_mask=mask)
    assert model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("evalkit")  # no variant set: softmax
    torch.testing.assert_close(logits(model, input_ids=ids, attention_mask=mask), stock, atol=1e-6, rtol=0)


def test_apply_softmax_restores_stock_model():
    model = tiny_model()
    ids = token_ids(2, 16)
    stock = logits(model, input_ids=ids)
    stock_keys = set(model.state_dict())
    apply_attention(model, "ssmax-bias", s=HEAD_S, b=HEAD_B, learnable=True)
    assert (logits(model, input_ids=ids) - stock).abs().max() > 1e-2
    apply_attention(model, "softmax")
    assert model.config._attn_implementation == "sdpa"
    assert not hasattr(model.config, CONFIG_KEY)
    assert set(model.state_dict()) == stock_keys
    torch.testing.assert_close(logits(model, input_ids=ids), stock, atol=1e-6, rtol=0)


def test_ssmax_with_s_one_over_log_n_is_softmax_at_position_n():
    # One layer: the last position's logits depend only on its own attention row, whose
    # factor is s * log(n) = 1 when s = 1 / log(n).
    model = tiny_model(layers=1)
    ids = token_ids(1, 12)
    softmax = logits(model, input_ids=ids)
    apply_attention(model, "ssmax", s=1 / math.log(12))
    ssmax = logits(model, input_ids=ids)
    torch.testing.assert_close(ssmax[:, -1], softmax[:, -1], atol=1e-6, rtol=0)
    assert (ssmax[:, :-1] - softmax[:, :-1]).abs().max() > 1e-2  # elsewhere it differs


def _one_large_logit_weight(variant: str, n: int) -> float:
    """Weight on the one key with logit 1 among n keys with logit 0 (one query, D = 1)."""
    module = torch.nn.Module()
    module.evalkit_variant, module.evalkit_n_mode = variant, "position"
    module.ssmax_s = torch.ones(1)
    module.num_key_value_groups = 1
    module.is_causal = True
    query = torch.ones(1, 1, 1, 1)  # (B, H, T_q, D)
    key = torch.zeros(1, 1, n, 1)  # (B, H, T_k, D)
    key[..., 0, 0] = 1.0
    value = torch.zeros(1, 1, n, 1)
    value[..., 0, 0] = 1.0  # output = weight on key 0
    out, _ = evalkit_attention_forward(module, query, key, value, None, scaling=1.0)
    return out.item()


def test_ssmax_max_weight_does_not_decay_with_n():
    for n in (16, 256, 4096):
        assert _one_large_logit_weight("softmax", n) == pytest.approx(math.e / (math.e + n - 1), rel=1e-5)
        # softmax(log n * z): n / (n + n - 1), stays near 1/2 for every n
        assert _one_large_logit_weight("ssmax", n) == pytest.approx(n / (2 * n - 1), rel=1e-5)
    assert _one_large_logit_weight("softmax", 4096) < 0.001 < 0.5 < _one_large_logit_weight("ssmax", 4096)


def test_length_mode_differs_from_position_and_matches_its_reference():
    model = tiny_model()
    ids = token_ids(2, 16)
    apply_attention(model, "ssmax", s=HEAD_S)
    position = logits(model, input_ids=ids)
    apply_attention(model, "ssmax", s=HEAD_S, n_mode="length")
    assert spec_from_model(model).n_mode == "length"
    length = logits(model, input_ids=ids)
    assert (length - position).abs().max() > 1e-2
    report = check_model(model, ids, attention_mask=left_padding_mask([16, 10], 16))
    assert report["max_abs_dev"] < ATOL, report
    # one layer: at the last position n = i + 1 = T in both modes, so the logits agree there
    one_layer = tiny_model(layers=1)
    apply_attention(one_layer, "ssmax", s=0.7)
    position = logits(one_layer, input_ids=ids)
    apply_attention(one_layer, "ssmax", s=0.7, n_mode="length")
    length = logits(one_layer, input_ids=ids)
    torch.testing.assert_close(length[:, -1], position[:, -1], atol=ATOL, rtol=0)


def test_probe_receives_exact_weights_for_requested_rows():
    model = tiny_model()
    apply_attention(model, "ssmax", s=HEAD_S)
    rows = torch.tensor([0, 7, 15])
    captured = {}

    def probe(inputs):
        captured["weights"] = inputs.weights(rows)  # (B, H, R, T_k)
        captured["inputs"] = inputs

    attn = model.model.layers[1].self_attn
    attn.evalkit_probe = probe
    ids, mask = token_ids(2, 16), left_padding_mask([16, 12], 16)
    logits(model, input_ids=ids, attention_mask=mask)
    inputs = captured["inputs"]
    assert inputs.key.shape[1] == 4  # repeated for GQA
    # the probe's q carries the factor s_h * log(n_i); divide it out and let the float64
    # reference apply it again (rows with n_i = 1 have factor 0 and q = 0 either way)
    factor = attn.ssmax_s.double().view(1, -1, 1, 1) * inputs.n.double().log()  # (B, H, T, 1)
    raw_query = inputs.query.double() / factor.clamp(min=1e-30)
    expected = reference_weights(raw_query, inputs.key, inputs.attention_mask, variant="ssmax", s=attn.ssmax_s)
    torch.testing.assert_close(captured["weights"].double(), expected[:, :, rows], atol=1e-6, rtol=0)
    sums = captured["weights"].sum(-1)
    assert torch.allclose(sums[1, :, 0], torch.zeros(4))  # a padding query row sees nothing
    assert torch.allclose(sums[0], torch.ones_like(sums[0]), atol=1e-6)


# --- checkpoints and training ---------------------------------------------------------------


def test_learnable_ssmax_save_load_round_trip(tmp_path):
    model = tiny_model()
    apply_attention(model, "ssmax-bias", s=HEAD_S, b=HEAD_B, n_mode="position", learnable=True)
    ids = token_ids(2, 16)
    before = logits(model, input_ids=ids)
    model.save_pretrained(tmp_path)

    config = json.loads((tmp_path / "config.json").read_text())
    assert config[CONFIG_KEY]["variant"] == "ssmax-bias"
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        torch.testing.assert_close(handle.get_tensor("model.layers.1.self_attn.ssmax_s"), torch.tensor(HEAD_S[1]))
    assert {"model.layers.0.self_attn.ssmax_s", "model.layers.0.self_attn.ssmax_b"} <= keys

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    spec = load_attention_from_checkpoint(reloaded, tmp_path)
    assert spec.variant == "ssmax-bias" and reloaded.config._attn_implementation == "evalkit"
    assert isinstance(reloaded.model.layers[0].self_attn.ssmax_s, torch.nn.Parameter)
    torch.testing.assert_close(logits(reloaded, input_ids=ids), before, atol=1e-6, rtol=0)


def test_training_step_updates_ssmax_s():
    model = tiny_model()
    apply_attention(model, "ssmax", s=0.5, learnable=True)
    model.train()
    s_before = model.model.layers[0].self_attn.ssmax_s.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ids = token_ids(2, 16)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grad = model.model.layers[0].self_attn.ssmax_s.grad
    assert grad is not None and grad.abs().max() > 0
    optimizer.step()
    assert not torch.equal(model.model.layers[0].self_attn.ssmax_s.detach(), s_before)


def test_params_files_json_and_safetensors(tmp_path):
    model = tiny_model()
    ids = token_ids(1, 12)
    apply_attention(model, "ssmax", s=HEAD_S)
    expected = logits(model, input_ids=ids)

    (tmp_path / "s.json").write_text(json.dumps({"s": HEAD_S}))
    save_file({"s": torch.tensor(HEAD_S)}, str(tmp_path / "s.safetensors"))
    for name in ("s.json", "s.safetensors"):
        fresh = tiny_model()
        spec = apply_attention(fresh, "ssmax", params=tmp_path / name)
        assert spec.params_file.endswith(name)
        torch.testing.assert_close(logits(fresh, input_ids=ids), expected, atol=1e-6, rtol=0)


# --- user errors ----------------------------------------------------------------------------


def test_unknown_variant_suggests_the_close_name():
    with pytest.raises(ConfigError, match="did you mean 'ssmax'"):
        apply_attention(tiny_model(), "sxmax", s=0.5)
    with pytest.raises(ConfigError, match="unknown attention variant 'nope'"):
        parse_attention_list("softmax,nope")
    assert parse_attention_list(" softmax, ssmax ") == ["softmax", "ssmax"]
    with pytest.raises(ConfigError, match="empty"):
        parse_attention_list("softmax,,ssmax")


def test_missing_parameters_name_the_flag():
    with pytest.raises(ConfigError, match="--ssmax-s"):
        apply_attention(tiny_model(), "ssmax")
    with pytest.raises(ConfigError, match="--ssmax-b"):
        apply_attention(tiny_model(), "ssmax-bias", s=0.5)
    with pytest.raises(ConfigError, match="--train-length"):
        apply_attention(tiny_model(), "logn")
    # per-head tensors already in the model satisfy ssmax without --ssmax-s
    model = tiny_model()
    apply_attention(model, "ssmax", s=HEAD_S)
    apply_attention(model, "ssmax")
    torch.testing.assert_close(model.model.layers[1].self_attn.ssmax_s, torch.tensor(HEAD_S[1]))


def test_wrong_shapes_and_bad_values_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"shape \(4,\), expected \(2, 4\)"):
        apply_attention(tiny_model(), "ssmax", s=torch.ones(4))
    with pytest.raises(ConfigError, match=r"shape \(2, 3\), expected \(2, 4\)"):
        apply_attention(tiny_model(), "ssmax", s=[[1.0, 1.0, 1.0]] * 2)
    (tmp_path / "bad.json").write_text(json.dumps({"s": [[1.0] * 4] * 3}))
    with pytest.raises(ConfigError, match=r"shape \(3, 4\)"):
        apply_attention(tiny_model(), "ssmax", params=tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="n mode"):
        AttentionSpec("ssmax", s=0.5, n_mode="rows")
    with pytest.raises(ConfigError, match="--train-length"):
        AttentionSpec("logn", train_length=0)
    with pytest.raises(ConfigError, match="unknown attention spec keys"):
        AttentionSpec.from_dict({"variant": "ssmax", "scale": 1.0})


def test_spec_round_trips_through_dict():
    spec = AttentionSpec("logn", train_length=2048, n_mode="length")
    assert AttentionSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    names = [row["name"] for row in describe_variants()]
    assert names == ["softmax", "ssmax", "ssmax-bias", "logn", "llama4-temp", "mistral-beta", "native"]
    assert describe_variants()[2]["parameters"] == ["--ssmax-s", "--ssmax-b"]


# --- RoPE overrides --------------------------------------------------------------------------


def test_override_rope_changes_config_before_construction():
    config = tiny_config()
    changes = override_rope(config, theta=50000.0, scaling="yarn", factor=4.0)
    assert config.rope_parameters["rope_type"] == "yarn"
    assert config.rope_parameters["original_max_position_embeddings"] == 512
    assert changes["rope_theta"] == {"from": 10000.0, "to": 50000.0}
    assert changes["factor"] == {"from": None, "to": 4.0}
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    assert model.model.rotary_emb.rope_type == "yarn"

    changes = override_rope(config, scaling="none")
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 50000.0}
    assert "factor" in changes


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(scaling="ntk", factor=2.0), "unknown RoPE scaling"),
        (dict(scaling="linear"), "needs a factor"),
        (dict(factor=2.0), "needs a scaling"),
        (dict(scaling="linear", factor=0.5), "--rope-factor"),
        (dict(theta=-1.0), "--rope-theta"),
    ],
)
def test_override_rope_rejects_bad_values(kwargs, message):
    config = tiny_config()
    with pytest.raises(ConfigError, match=message):
        override_rope(config, **kwargs)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    with pytest.raises(ConfigError, match="no RoPE"):
        override_rope(SimpleNamespace(rope_parameters=None), theta=1e4)
