"""evalkit's plugin for vLLM: the attention variants as a factor on q after RoPE.

vLLM calls ``register`` in every process it starts (the ``vllm.general_plugins`` entry point in
pyproject.toml), so engine workers spawned for tensor or pipeline parallelism know evalkit's model
classes too. For each supported architecture X it registers ``EvalkitX``: vLLM's own class for X
whose attention modules get their ``rotary_emb`` wrapped by ``QScale``, which multiplies q, after
RoPE, by the per-query, per-head factor of evalkit's exact path (``attention/variants.py``):

    factor[i, h] = max(s_h * log(n_i) + b_h, floor),   n_i = position_i + 1 (keys query i sees)

    softmax      s = 0,            b = 1,   floor = -inf   (q * 1.0: bit-identical to stock)
    ssmax        s = s_h,          b = 0,   floor = -inf
    ssmax-bias   s = s_h,          b = b_h, floor = -inf
    logn         s = 1 / log(L),   b = 0,   floor = 1

computed in float32, then cast to q's dtype before the product, as ``attention/function.py`` does.
One formula with tensor parameters, never a Python branch: vLLM compiles the forward once (its
compiled graphs keep no guards) and captures CUDA graphs, so a variant switch only writes new
values into the buffers in place (``set_factors``), which compiled graphs and captured CUDA graphs
read at every step. The backend selects a class with ``hf_overrides={"architectures": [...]}``.

Checkpoints saved by evalkit hold ``...self_attn.ssmax_s`` / ``ssmax_b`` tensors vLLM's classes do
not know; ``load_weights`` drops them (the backend reads them itself and hands them to
``set_factors``).

This module imports vLLM only inside functions: evalkit imports it without vLLM installed.
"""

from __future__ import annotations

import math
import re
import sys

# Architectures whose vLLM attention modules call ``self.rotary_emb(positions, q, k)`` on 1-D
# absolute positions with full causal attention: the factor above is exact for them.
SUPPORTED = {
    "LlamaForCausalLM": "vllm.model_executor.models.llama:LlamaForCausalLM",
    "MistralForCausalLM": "vllm.model_executor.models.llama:LlamaForCausalLM",
    "Qwen2ForCausalLM": "vllm.model_executor.models.qwen2:Qwen2ForCausalLM",
    "Qwen3ForCausalLM": "vllm.model_executor.models.qwen3:Qwen3ForCausalLM",
}
PREFIX = "Evalkit"
EVALKIT_TENSORS = (".ssmax_s", ".ssmax_b")  # evalkit's per-head tensors in a saved checkpoint
_LAYER = re.compile(r"layers\.(\d+)\.")


def scaled_architecture(architecture: str) -> str | None:
    """The evalkit class name vLLM knows for ``architecture``, or None where the plugin has none."""
    return PREFIX + architecture if architecture in SUPPORTED else None


def register() -> None:
    """vLLM's general-plugin hook: runs in every vLLM process before a model is built."""
    from vllm import ModelRegistry

    known = set(ModelRegistry.get_supported_archs())
    for architecture in SUPPORTED:
        name = PREFIX + architecture
        if name not in known:
            # the class itself, not a lazy "module:Class" string: vLLM inspects lazy ones in a
            # subprocess that imports vLLM again (20 s and more on a busy CPU)
            ModelRegistry.register_model(name, getattr(sys.modules[__name__], name))


def __getattr__(name: str):
    """``EvalkitLlamaForCausalLM`` and the others, built on first access (vLLM imports them lazily)."""
    base = name.removeprefix(PREFIX)
    if name.startswith(PREFIX) and base in SUPPORTED:
        cls = _scaled_class(base)
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _scaled_class(architecture: str):
    import importlib

    module, _, attr = SUPPORTED[architecture].partition(":")
    base = getattr(importlib.import_module(module), attr)

    def __init__(self, *, vllm_config, prefix: str = ""):
        base.__init__(self, vllm_config=vllm_config, prefix=prefix)
        install(self)

    def load_weights(self, weights):
        return base.load_weights(self, ((n, w) for n, w in weights if not n.endswith(EVALKIT_TENSORS)))

    return type(PREFIX + architecture, (base,), {"__init__": __init__, "load_weights": load_weights})


def _qscale_class():
    import torch
    from torch import nn

    class QScale(nn.Module):
        """A layer's rotary embedding, then q times the variant's factor (module docstring)."""

        def __init__(self, rope: nn.Module, layer: int, num_heads: int, head_dim: int, first_head: int):
            super().__init__()
            self.rope = rope
            self.layer, self.num_heads, self.head_dim, self.first_head = layer, num_heads, head_dim, first_head
            device = next((t.device for t in rope.buffers()), None)
            self.register_buffer("s", torch.zeros(num_heads, dtype=torch.float32, device=device), persistent=False)
            self.register_buffer("b", torch.ones(num_heads, dtype=torch.float32, device=device), persistent=False)
            self.register_buffer("floor", torch.full((1,), -math.inf, device=device), persistent=False)

        def forward(self, positions, query, key, *args, **kwargs):
            query, key = self.rope(positions, query, key, *args, **kwargs)
            log_n = (positions.reshape(-1, 1).to(torch.float32) + 1.0).log()  # (T, 1)
            factor = torch.maximum(log_n * self.s + self.b, self.floor)  # (T, H) float32
            shape = query.shape
            query = query.view(shape[0], self.num_heads, self.head_dim) * factor.to(query.dtype)[..., None]
            return query.view(shape), key

    return QScale


def install(model) -> int:
    """Wrap the rotary embedding of every attention module of ``model``; return how many."""
    QScale = _qscale_class()
    try:
        from vllm.distributed import get_tensor_model_parallel_rank

        rank = get_tensor_model_parallel_rank()
    except Exception:  # no parallel state (a unit test building the class by hand)
        rank = 0
    count = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, QScale) or not hasattr(module, "rotary_emb") or not hasattr(module, "attn"):
            continue
        layer = _LAYER.search(name)
        heads = module.num_heads  # this rank's heads under tensor parallelism
        # the rotary embedding may be one object shared by every layer (vLLM caches it): wrap, never edit
        module.rotary_emb = QScale(
            module.rotary_emb, int(layer.group(1)) if layer else count, heads, module.head_dim, rank * heads
        )
        count += 1
    if not count:
        raise RuntimeError(f"evalkit found no attention module with a rotary embedding in {type(model).__name__}")
    return count


def set_factors(model, s, b, floor: float) -> int:
    """Write a variant's values into every ``QScale`` of ``model`` in place.

    ``s`` and ``b``: (layers, heads) nested lists over the model's full head count (each rank takes
    its slice); ``floor``: a number (-inf for none). Returns how many layers were set.
    """
    import torch

    count = 0
    for module in model.modules():
        if not hasattr(module, "first_head") or not hasattr(module, "rope"):
            continue
        heads = slice(module.first_head, module.first_head + module.num_heads)
        module.s.copy_(torch.tensor(s[module.layer][heads], dtype=torch.float32))
        module.b.copy_(torch.tensor(b[module.layer][heads], dtype=torch.float32))
        module.floor.fill_(floor)
        count += 1
    return count
