"""The vLLM backend's parts that need no vLLM: the plugin's factor on q against evalkit's own variant
factors, the family check, and the refusals (the engine itself: tests/test_vllm_backend.py, -m vllm)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from evalkit.attention import AttentionSpec
from evalkit.attention.variants import get_variant
from evalkit.backends import vllm_plugin
from evalkit.backends.vllm import Family, VllmBackend
from evalkit.core.backend import refuse_unsupported
from evalkit.core.errors import ConfigError

LAYERS, HEADS, DIM = 3, 4, 8
LLAMA = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": LAYERS, "num_attention_heads": HEADS}


class _Rope(nn.Module):
    """Stands in for vLLM's rotary embedding: returns q and k unchanged (the plugin scales after it)."""

    def forward(self, positions, query, key):
        return query, key


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.rotary_emb, self.attn = _Rope(), nn.Identity()
        self.num_heads, self.head_dim = HEADS, DIM


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict({"self_attn": _Attention()}) for _ in range(LAYERS))


def _scaled(spec: AttentionSpec, tables: dict, positions, query):
    """q after every layer's QScale, with the backend's values for ``spec``."""
    model = _Model()
    assert vllm_plugin.install(model) == LAYERS
    family = Family.of(LLAMA)
    vllm_plugin.set_factors(model, *family.factors(spec, tables, SimpleNamespace(**LLAMA)))
    return [layer["self_attn"].rotary_emb(positions, query, query)[0] for layer in model.layers]


def _evalkit(name: str, params: dict, positions, query):
    """The same q scaled by evalkit's exact path: factor(n) in float32, cast, times q (n = position + 1)."""
    n = (positions.float() + 1.0).view(1, 1, -1, 1)
    factor = get_variant(name).factor(n, HEADS, params)[0, :, :, 0].T  # (T, H)
    q = query.view(len(positions), HEADS, DIM)
    return (q * factor.to(q.dtype)[..., None]).view_as(query)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_factors_equal_evalkit_variants(dtype):
    positions = torch.tensor([0, 1, 2, 7, 100, 4095, 40000])
    query = torch.randn(len(positions), HEADS * DIM, generator=torch.Generator().manual_seed(0)).to(dtype)
    table = torch.rand(LAYERS, HEADS, generator=torch.Generator().manual_seed(1)) + 0.1
    bias = torch.rand(LAYERS, HEADS, generator=torch.Generator().manual_seed(2)) - 0.5
    cases = [
        (AttentionSpec("ssmax", s=0.43), {}, lambda i: ("ssmax", {"s": torch.full((HEADS,), 0.43)})),
        (AttentionSpec("ssmax"), {"s": table}, lambda i: ("ssmax", {"s": table[i]})),
        (AttentionSpec("ssmax-bias"), {"s": table, "b": bias}, lambda i: ("ssmax-bias", {"s": table[i], "b": bias[i]})),
        (AttentionSpec("logn", train_length=512), {}, lambda i: ("logn", {"train_length": 512})),
    ]
    for spec, tables, reference in cases:
        for layer, got in enumerate(_scaled(spec, tables, positions, query)):
            want = _evalkit(*reference(layer), positions, query)
            torch.testing.assert_close(got, want, rtol=1e-6 if dtype == torch.float32 else 1e-2, atol=0)
    for got in _scaled(AttentionSpec("softmax"), {}, positions, query):
        assert torch.equal(got, query)  # q * 1.0: bit-identical to stock attention


def test_layers_left_out_run_softmax():
    positions, query = torch.arange(5), torch.randn(5, HEADS * DIM)
    out = _scaled(AttentionSpec("ssmax", s=0.5, layers="0,2"), {}, positions, query)
    assert torch.equal(out[1], query) and not torch.equal(out[0], query)


def test_family_check_and_refusals():
    assert Family.of(LLAMA).variants() == {"softmax", "ssmax", "ssmax-bias", "logn"}
    qwen = {**LLAMA, "architectures": ["Qwen2ForCausalLM"], "sliding_window": 4096, "use_sliding_window": False}
    assert Family.of(qwen).scaled == "EvalkitQwen2ForCausalLM"
    mistral = {**LLAMA, "architectures": ["MistralForCausalLM"], "sliding_window": 4096}
    llama4 = {**LLAMA, "attn_temperature_tuning": True, "no_rope_layers": [1, 1, 0]}
    gemma = {**LLAMA, "architectures": ["Gemma2ForCausalLM"]}
    for config, why in ((mistral, "sliding window"), (llama4, "scales q itself"), (gemma, "does not know")):
        family = Family.of(config)
        family.refuse("native")  # always: the model as vLLM ships it
        with pytest.raises(ConfigError, match=why):
            family.refuse("ssmax")
    assert Family.of(llama4).native.variant == "llama4-temp"
    with pytest.raises(ConfigError, match="scales q itself"):
        Family.of(llama4).refuse("softmax")  # would need vLLM's own scaling switched off
    with pytest.raises(ConfigError, match="by position only"):
        Family.of(LLAMA).refuse("ssmax", n_mode="length")
    with pytest.raises(ConfigError, match="focus needs --backend transformers"):
        refuse_unsupported(VllmBackend, {"probe"}, [])
    with pytest.raises(ConfigError, match="mistral-beta"):
        refuse_unsupported(VllmBackend, set(), ["mistral-beta"])
    refuse_unsupported(VllmBackend, {"generate", "answer_score", "token_loss"}, ["auto", "softmax", "ssmax", "logn"])
    assert VllmBackend.declared().batches_itself
    assert math.isinf(Family.of(LLAMA).factors(AttentionSpec("softmax"), {}, SimpleNamespace(**LLAMA))[2])


@pytest.mark.parametrize(("given", "user_env", "expected"), [(None, None, "4"), (1.0, None, "1"), (None, "8", "8")])
def test_the_cpu_kv_cache_is_bounded_unless_asked(monkeypatch, given, user_env, expected):
    """vLLM's CPU engine sizes its KV cache by --gpu-memory-utilization when VLLM_CPU_KVCACHE_SPACE is
    unset: 90% of the machine's RAM. evalkit sets 4 GiB by default, --kv-cache-gb otherwise; a value the
    user exported wins."""
    import os

    from evalkit.backends.vllm import VllmOptions, _set_engine_environment

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    if user_env is not None:
        monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", user_env)
    for name in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_CONFIGURE_LOGGING"):
        monkeypatch.setenv(name, "")  # restored after the test: _set_engine_environment only sets defaults
    _set_engine_environment(VllmOptions(kv_cache_gb=given))
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == expected
