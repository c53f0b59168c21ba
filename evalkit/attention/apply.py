"""Switch a loaded transformers model to an attention variant, in place, and back.

``apply_attention(model, "ssmax", s=0.43)`` does three things:

1. On every attention module (the class transformers records attentions from, e.g.
   ``LlamaAttention``), sets ``evalkit_variant`` ("softmax" on layers ``--attention-layers``
   leaves out), ``evalkit_n_mode``, the scalar parameters (``evalkit_train_length``,
   ``evalkit_attn_scale``, ...) and the per-head tensors the variant needs, float32, shape
   (num_heads,):

       <attention module>.ssmax_s     e.g. model.layers.{i}.self_attn.ssmax_s   (ssmax, ssmax-bias)
       <attention module>.ssmax_b     e.g. model.layers.{i}.self_attn.ssmax_b   (ssmax-bias)

   They are ``nn.Parameter`` when ``learnable=True`` (so an optimizer trains them), persistent
   buffers otherwise; either way they are in ``model.state_dict()`` and so in the safetensors
   files ``save_pretrained`` writes. Tensors the variant does not need are removed.
2. Switches the model to the "evalkit" attention implementation with
   ``model.set_attn_implementation`` (works in place in transformers 5.x, no reload).
3. Records the variant in ``model.config.evalkit_attention`` (a dict: the ``AttentionSpec``
   fields plus ``learnable``, ``tensors`` and ``layer_indices``, the layers the variant is on),
   which ``save_pretrained`` writes to config.json.

``apply_attention(model, "softmax")`` undoes all three and restores the implementation the model
had before (normally "sdpa").

A checkpoint whose modelling code scales q itself (Llama 4, Ministral 3, Mistral 4: ``native.py``)
keeps that scaling only under ``apply_attention(model, "native")``, the stock forward as shipped;
softmax and every other variant switch it off first, so a variant replaces it, never stacks on it.

``AutoModelForCausalLM.from_pretrained(dir)`` brings back the config key but drops the
``ssmax_*`` tensors (a stock Llama has no such keys; transformers reports them as unexpected) and
loads with sdpa. ``load_attention_from_checkpoint(model, dir)`` reads them from the safetensors
files itself and re-applies the variant.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evalkit.attention.function import IMPLEMENTATION, module_attribute
from evalkit.attention.modules import attention_modules
from evalkit.attention.native import set_native
from evalkit.attention.reference import IMPLEMENTATION as REFERENCE_IMPLEMENTATION
from evalkit.attention.spec import AttentionSpec
from evalkit.attention.variants import PARAMETER_FLAGS, SCALAR_PARAMETERS, get_variant
from evalkit.core.errors import ConfigError, ModelLoadError

CONFIG_KEY = "evalkit_attention"
TENSOR_NAMES = {"s": "ssmax_s", "b": "ssmax_b"}  # parameter -> attribute on the attention module
_MODULE_ATTRS = ("evalkit_variant", "evalkit_n_mode", *(module_attribute(p) for p in SCALAR_PARAMETERS))
_RECORD_ONLY = ("learnable", "tensors", "layer_indices")  # config.json keys that are not spec fields
_OUR_IMPLEMENTATIONS = (IMPLEMENTATION, REFERENCE_IMPLEMENTATION)

# A table of per-head values: one number, a (layers, heads) tensor or nested list, a list of
# per-layer (heads,) tensors, or {attention module name: (heads,)} as in a state dict.
HeadTable = Any


# --- finding the attention modules ---------------------------------------------------------


def select_layers(model: nn.Module, layers: str, count: int) -> list[int]:
    """Indices (0-based, into the attention modules in layer order) that ``layers`` selects."""
    if layers == "all":
        return list(range(count))
    if layers in ("nope", "rope"):
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        flags = getattr(config, "no_rope_layers", None)
        if not flags:
            raise ConfigError(
                f"--attention-layers {layers} needs the config's no_rope_layers, which "
                f"{type(config).__name__} does not have",
                "give layer indices, e.g. --attention-layers 0,2,5, or all",
            )
        # Llama 4 / SmolLM3 convention: no_rope_layers[i] == 1 means layer i uses RoPE
        wanted = 1 if layers == "rope" else 0
        chosen = [i for i in range(count) if int(flags[i]) == wanted]
        if not chosen:
            raise ConfigError(f"--attention-layers {layers} selects no layer of this model", "use all or a list")
        return chosen
    indices = [int(i) for i in layers.split(",")]
    if indices[-1] >= count:
        raise ConfigError(
            f"--attention-layers {layers} names layer {indices[-1]}, but the model has {count} (0-{count - 1})",
            "give indices below the layer count",
        )
    return indices


def _num_heads(module: nn.Module) -> int:
    return int(getattr(module, "num_heads", None) or module.config.num_attention_heads)


# --- per-head tables -----------------------------------------------------------------------


def _match_module(key_prefix: str, names: list[str]) -> int | None:
    """Index of the module a state-dict prefix belongs to, tolerating a missing/extra
    base-model prefix ("model.layers.0.self_attn" vs "layers.0.self_attn")."""
    if key_prefix in names:
        return names.index(key_prefix)
    hits = [i for i, name in enumerate(names) if name.endswith("." + key_prefix) or key_prefix.endswith("." + name)]
    return hits[0] if len(hits) == 1 else None


def as_head_table(value: HeadTable, *, param: str, names: list[str], num_heads: int) -> torch.Tensor:
    """Normalize ``value`` to a float32 (layers, heads) tensor; ConfigError naming the shape."""
    flag = PARAMETER_FLAGS[param]
    layers = len(names)
    expected = f"({layers}, {num_heads}) = [layers, heads]"
    if isinstance(value, Mapping):
        rows: list[torch.Tensor | None] = [None] * layers
        for prefix, row in value.items():
            index = _match_module(prefix, names)
            if index is None:
                raise ConfigError(
                    f"{flag} table entry {prefix!r} matches no attention module",
                    f"use module names like {names[0]!r}",
                )
            rows[index] = torch.as_tensor(row, dtype=torch.float32).reshape(-1)
        missing = [names[i] for i, row in enumerate(rows) if row is None]
        if missing:
            raise ConfigError(f"{flag} table has no entry for {missing[0]!r}", f"give values for all {layers} layers")
        value = rows
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        value = [row.detach().float().reshape(-1) for row in value]
        if len({row.numel() for row in value}) != 1:
            raise ConfigError(f"{flag} rows have different lengths", f"expected shape {expected}")
        value = torch.stack(value)
    try:
        table = torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value, dtype=torch.float32).cpu()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{flag} is not a number or a numeric table ({exc})", f"expected shape {expected}") from None
    if table.dim() == 0:
        table = table.expand(layers, num_heads)
    if tuple(table.shape) != (layers, num_heads):
        raise ConfigError(
            f"{flag} table has shape {tuple(table.shape)}, expected {expected}",
            "give one number, or one value per layer and head",
        )
    if not torch.isfinite(table).all():
        raise ConfigError(f"{flag} table holds non-finite values", "use finite numbers")
    return table.clone()


def _gather_state_dict_entries(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{"model.layers.0.self_attn.ssmax_s": t, ...} -> {"s": {"model.layers.0.self_attn": t}}."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for param, attr in TENSOR_NAMES.items():
        rows = {key[: -len(attr) - 1]: t for key, t in tensors.items() if key.endswith("." + attr)}
        if rows:
            out[param] = rows
    return out


def load_param_table(path: str | os.PathLike) -> dict[str, HeadTable]:
    """Read per-layer/head s (and b) from a ``.json`` or ``.safetensors`` file.

    JSON: ``{"s": [[...], ...], "b": [[...], ...]}`` or a bare ``[[...], ...]`` (= s).
    safetensors: tensors "s"/"b" (or "ssmax_s"/"ssmax_b") of shape (layers, heads), or
    state-dict style "model.layers.{i}.self_attn.ssmax_s" entries of shape (heads,).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"attention params file {str(path)!r} not found", "check the path")
    aliases = {"s": "s", "b": "b", "ssmax_s": "s", "ssmax_b": "b"}
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read attention params {str(path)!r}: {exc}", "fix the JSON") from None
        if isinstance(data, list):
            return {"s": data}
        if not isinstance(data, dict) or set(data) - set(aliases):
            raise ConfigError(
                f"attention params {str(path)!r} must be a [layers][heads] list or an object with keys s, b",
                'e.g. {"s": [[0.4, 0.5], [0.3, 0.6]]}',
            )
        return {aliases[k]: v for k, v in data.items()}
    if path.suffix == ".safetensors":
        tensors = _read_safetensors([path])
        out: dict[str, HeadTable] = _gather_state_dict_entries(tensors)
        for key, t in tensors.items():
            if key in aliases:
                out[aliases[key]] = t
        if not out:
            raise ConfigError(
                f"attention params {str(path)!r} holds no s/b tables",
                "store tensors named s and b of shape (layers, heads)",
            )
        return out
    raise ConfigError(f"attention params file {str(path)!r} must end in .json or .safetensors", "convert it")


def _read_safetensors(files: list[Path], suffixes: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    tensors = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    if suffixes is None or key.endswith(suffixes):
                        tensors[key] = handle.get_tensor(key)
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise ModelLoadError(f"cannot read {str(file)!r}: {exc}", "re-save the checkpoint") from exc
    return tensors


# --- module state --------------------------------------------------------------------------


def _drop(module: nn.Module, name: str) -> None:
    if name in module._parameters or name in module._buffers or name in module.__dict__:
        delattr(module, name)


def _set_head_tensor(module: nn.Module, name: str, values: torch.Tensor, learnable: bool) -> None:
    """Store (H,) values as a float32 Parameter or persistent buffer next to q_proj's weights."""
    device = next(module.parameters()).device
    tensor = values.to(device=device, dtype=torch.float32).clone()
    _drop(module, name)
    if learnable:
        module.register_parameter(name, nn.Parameter(tensor))
    else:
        module.register_buffer(name, tensor, persistent=True)


def _current_table(modules: list[tuple[str, nn.Module]], attr: str) -> torch.Tensor | None:
    """The (layers, heads) values already stored in the model, if every layer has them."""
    rows = [getattr(module, attr, None) for _, module in modules]
    if any(row is None for row in rows):
        return None
    return torch.stack([row.detach().float().cpu() for row in rows])


def head_tables(model: nn.Module) -> dict[str, torch.Tensor]:
    """The per-head tables the model holds now, as {"s": (layers, heads), "b": ...} on the CPU."""
    modules = attention_modules(model)
    tables = {p: _current_table(modules, attr) for p, attr in TENSOR_NAMES.items()} if modules else {}
    return {p: t for p, t in tables.items() if t is not None}


def _scalar(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return float(value)
    return None


def _restore_stock(model: nn.Module, modules: list[tuple[str, nn.Module]]) -> None:
    for _, module in modules:
        for name in (*TENSOR_NAMES.values(), *_MODULE_ATTRS):
            _drop(module, name)
    if hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
    base = getattr(model, "_evalkit_base_implementation", None) or "sdpa"
    if model.config._attn_implementation != base:
        model.set_attn_implementation(base)


# --- public API ----------------------------------------------------------------------------


def apply_attention(
    model: nn.Module,
    variant: str | AttentionSpec,
    *,
    s: HeadTable | None = None,
    b: HeadTable | None = None,
    train_length: int | None = None,
    n_mode: str = "position",
    learnable: bool = False,
    params: str | os.PathLike | Mapping[str, HeadTable] | None = None,
    attn_scale: float | None = None,
    floor_scale: float | None = None,
    beta: float | None = None,
    original_length: int | None = None,
    layers: str | list[int] | None = None,
) -> AttentionSpec:
    """Switch ``model`` to ``variant`` in place; return the ``AttentionSpec`` now in force.

    ``s``/``b``: one number for every head, or a per-layer/head table (see ``as_head_table``).
    ``params``: a ``.json``/``.safetensors`` file or a mapping ``{"s": table, "b": table}``.
    Precedence for each of s, b: the argument, then ``params``, then the values already in the
    model (e.g. from ``load_attention_from_checkpoint``). An ``AttentionSpec`` may stand in for
    variant and the keyword arguments it carries. Scalars not given take the variant's defaults
    (``AttentionSpec.with_defaults``). ``layers``: "all" (default), "nope", "rope" or indices;
    layers left out run plain softmax.
    """
    scalars = dict(
        train_length=train_length,
        attn_scale=attn_scale,
        floor_scale=floor_scale,
        beta=beta,
        original_length=original_length,
    )
    if isinstance(variant, AttentionSpec):
        given = variant
        variant, n_mode = given.variant, given.n_mode
        s = given.s if s is None else s
        b = given.b if b is None else b
        scalars = {k: getattr(given, k) if v is None else v for k, v in scalars.items()}
        params = given.params_file if params is None else params
        layers = given.layers if layers is None else layers

    tables: dict[str, HeadTable] = {}
    params_file = None
    if isinstance(params, (str, os.PathLike)):
        params_file = str(params)
        tables.update(load_param_table(params))
    elif isinstance(params, Mapping):
        unknown = set(params) - set(TENSOR_NAMES)
        if unknown:
            raise ConfigError(f"unknown attention params {sorted(unknown)}", "use keys s and b")
        tables.update(params)
    elif params is not None:
        raise ConfigError(f"attention params must be a file path or a mapping, got {type(params).__name__}", "")
    for param, value in (("s", s), ("b", b)):
        if value is not None and _scalar(value) is None:
            tables[param] = value  # an explicit table beats the params file

    spec = AttentionSpec(
        variant=variant,
        s=_scalar(s),
        b=_scalar(b),
        n_mode=n_mode,
        params_file=params_file,
        layers="all" if layers is None else layers,
        **scalars,
    ).with_defaults(model.config)
    modules = attention_modules(model)
    if model.config._attn_implementation not in _OUR_IMPLEMENTATIONS:
        model._evalkit_base_implementation = model.config._attn_implementation
    # a checkpoint's native scaling (native.py) runs only under "native": every other variant
    # replaces it, never stacks on it
    if spec.variant in ("softmax", "native"):
        set_native(model, spec.variant == "native")
        _restore_stock(model, modules)
        return spec

    names = [name for name, _ in modules]
    num_heads = {_num_heads(module) for _, module in modules}
    if len(num_heads) != 1:
        raise ConfigError("attention layers have different head counts", "per-head tables need equal heads")
    num_heads = num_heads.pop()
    existing = {p: _current_table(modules, attr) for p, attr in TENSOR_NAMES.items()}
    spec.require({p for p in TENSOR_NAMES if p in tables or existing[p] is not None})
    selected = set(select_layers(model, spec.layers, len(modules)))

    needed = [p for p in get_variant(spec.variant).parameters if p in TENSOR_NAMES]
    resolved = {}  # every table is checked before the model is touched
    for param in needed:
        scalar = getattr(spec, param)
        source = scalar if scalar is not None else tables.get(param, existing[param])
        resolved[param] = as_head_table(source, param=param, names=names, num_heads=num_heads)  # (L, H)
    set_native(model, False)
    for param, table in resolved.items():
        for (_, module), row in zip(modules, table):
            _set_head_tensor(module, TENSOR_NAMES[param], row, learnable)
    for param, attr in TENSOR_NAMES.items():
        if param not in needed:
            for _, module in modules:
                _drop(module, attr)
    # per-head tables go on every layer (they are (layers, heads) tables); the variant only on
    # the selected ones, the others take the softmax path, bit-identical to stock sdpa
    for index, (_, module) in enumerate(modules):
        module.evalkit_variant = spec.variant if index in selected else "softmax"
        module.evalkit_n_mode = spec.n_mode
        for param in SCALAR_PARAMETERS:
            setattr(module, module_attribute(param), getattr(spec, param))

    if model.config._attn_implementation != IMPLEMENTATION:
        model.set_attn_implementation(IMPLEMENTATION)
    setattr(
        model.config,
        CONFIG_KEY,
        {
            **spec.to_dict(),
            "learnable": bool(learnable),
            "tensors": [TENSOR_NAMES[p] for p in needed],
            "layer_indices": sorted(selected),
        },
    )
    return spec


def spec_from_model(model: nn.Module) -> AttentionSpec:
    """The variant recorded in ``model.config`` (softmax when none is)."""
    record = getattr(model.config, CONFIG_KEY, None)
    if not record:
        return AttentionSpec()
    return AttentionSpec.from_dict({k: v for k, v in record.items() if k not in _RECORD_ONLY})


def _checkpoint_files(checkpoint_dir: Path) -> list[Path]:
    index = checkpoint_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return sorted({checkpoint_dir / f for f in weight_map.values()})
    return sorted(checkpoint_dir.glob("*.safetensors"))


def load_attention_from_checkpoint(model: nn.Module, checkpoint_dir: str | os.PathLike) -> AttentionSpec:
    """Re-apply the variant saved with a checkpoint: the config record plus per-head tensors.

    Use after ``AutoModelForCausalLM.from_pretrained(checkpoint_dir)``. A checkpoint with no
    record is softmax and the model is left unchanged.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise ModelLoadError(f"checkpoint folder {str(checkpoint_dir)!r} not found", "check the path")
    record = getattr(model.config, CONFIG_KEY, None)
    config_file = checkpoint_dir / "config.json"
    if record is None and config_file.is_file():
        record = json.loads(config_file.read_text()).get(CONFIG_KEY)
    if not record:
        return AttentionSpec()
    spec = AttentionSpec.from_dict({k: v for k, v in record.items() if k not in _RECORD_ONLY})

    suffixes = tuple("." + attr for attr in TENSOR_NAMES.values())
    tensors = _read_safetensors(_checkpoint_files(checkpoint_dir), suffixes)
    tables = _gather_state_dict_entries(tensors)
    for param, attr in TENSOR_NAMES.items():
        if attr in record.get("tensors", []) and param not in tables:
            raise ModelLoadError(
                f"checkpoint {str(checkpoint_dir)!r} records {attr} but its safetensors files lack it",
                "re-save the model after apply_attention",
            )
    return apply_attention(
        model,
        replace(spec, s=None, b=None, params_file=None),  # s, b come as tables or scalars below
        s=tables.get("s", spec.s),
        b=tables.get("b", spec.b),
        learnable=bool(record.get("learnable", False)),
    )
