"""The vLLM backend: generation and prompt scoring on a serving engine (``--backend vllm``).

vLLM batches by itself (continuous batching over a paged KV cache, prefix caching), so the runner
hands it whole lists of requests: RULER's prompts of every length are generated together instead
of one equal-length bucket at a time. It answers

- ``generate``: greedy, all prompts at once, cut at the first end-of-sequence id as the
  transformers backend cuts (``_until_eos``);
- ``token_loss`` and ``answer_score``: from vLLM's prompt log-probs, computed on the raw logits
  (float32 logits in a float32 model). The rank vLLM returns with each prompt token gives
  ``first_token_rank`` and ``greedy_correct`` (rank 1 at every answer token). An answer is fed whole
  (prompt + answer, one position more than the transformers backend feeds): with causal attention
  and factors that depend only on a query's own position, the answer's log-probs are the same.

and refuses attention probes (focus stays on the transformers backend). Attention variants run
through evalkit's vLLM plugin (``vllm_plugin.py``): softmax, ssmax, ssmax-bias and logn for the
architectures it knows, and ``native``, the model as vLLM ships it (Llama 4's temperature tuning
is vLLM's own code), never stacked on another variant.

Engine settings are this backend's ``Options`` (``evalkit run --backend vllm --max-model-len ...``),
passed to ``vllm.LLM`` unchanged; vLLM is imported only in ``load``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from evalkit.core.backend import Backend, Capabilities
from evalkit.core.errors import ConfigError, ModelLoadError
from evalkit.core.requests import AnswerScore, AnswerScoreRequest, GenerateRequest, TokenLossRequest
from evalkit.core.task import option

VARIANTS = frozenset({"softmax", "ssmax", "ssmax-bias", "logn"})  # what the plugin's factor formula covers
NOTES = {
    "probe": "focus needs --backend transformers (vLLM exposes no attention weights)",
    "variants": "vLLM runs softmax, ssmax, ssmax-bias, logn and native; use --backend transformers for the others",
}
# Config switches of a scaling the modelling code applies itself (vLLM's code applies it too).
NATIVE_KEYS = {"attn_temperature_tuning": "llama4-temp", "llama_4_scaling_beta": "mistral-beta"}


CPU_KV_CACHE_GB = 4  # the CPU engine's KV cache when --kv-cache-gb is not given


@dataclass(frozen=True)
class VllmOptions:
    max_model_len: int | None = option(
        None, "Longest prompt + generation the engine takes (default: the model's position limit)."
    )
    gpu_memory_utilization: float = option(0.9, "Share of each GPU's memory vLLM takes for weights and KV cache.")
    kv_cache_gb: float | None = option(
        None, "KV cache size in GiB (GPU: instead of --gpu-memory-utilization; CPU: default 4)."
    )
    prefix_caching: bool = option(True, "Reuse the KV cache of prompt prefixes shared across requests.")
    tensor_parallel_size: int = option(1, "GPUs one model is split over, layer by layer (vLLM tensor parallel).")
    pipeline_parallel_size: int = option(1, "Stages the layers are split into (vLLM pipeline parallel).")
    data_parallel_size: int = option(1, "Engine replicas answering requests side by side (vLLM data parallel).")
    enforce_eager: bool = option(False, "No compilation or CUDA graphs: faster start, slower decoding.")
    max_num_seqs: int | None = option(None, "Most sequences the engine runs at once (vLLM's default if unset).")
    max_num_batched_tokens: int | None = option(None, "Most tokens one engine step runs (prefill chunk size).")
    load_format: str = option("auto", "How vLLM reads weights: auto, safetensors, or dummy (random, for timing).")


class VllmBackend(Backend):
    name = "vllm"
    summary = "a vLLM engine: continuous batching, paged KV cache, prefix caching, tensor/pipeline/data parallel"
    Options = VllmOptions

    @classmethod
    def declared(cls) -> Capabilities:
        return Capabilities(
            requests=frozenset({"token_loss", "answer_score", "generate"}),
            variants=VARIANTS,
            native=True,
            batches_itself=True,
            notes=dict(NOTES),
        )

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def check_model(cls, model: str, variants: list[str], options) -> None:
        """Before the engine starts: a Hugging Face folder whose model family can run ``variants``."""
        from evalkit.models.loading import resolve

        source = resolve(model, log=lambda *a: None)
        if source.kind != "hf":
            return  # load says why in one line
        family = Family.of(_folder_config(source, options))
        for variant in variants:
            family.refuse(variant)

    @classmethod
    def load(cls, model: str, options, backend_options=None, log=print) -> VllmBackend:
        """Start a vLLM engine on ``model``."""
        from evalkit.models.loading import resolve

        engine = backend_options or VllmOptions()
        _refuse_load_options(options, engine)
        source = resolve(model, log=log)
        if source.kind != "hf":
            raise ModelLoadError(
                f"the vllm backend loads Hugging Face model folders, not {source.kind} ({model})",
                "convert it to a safetensors folder, or use --backend transformers",
            )
        config = _folder_config(source, options)
        family = Family.of(config)
        backend = cls()
        backend._start(source, config, family, options, engine, log)
        return backend

    def _start(self, source, config: dict, family: Family, options, engine: VllmOptions, log) -> None:
        _set_engine_environment(engine)
        import torch
        from transformers import AutoConfig, AutoTokenizer

        from evalkit.models.loading import content_hash, part_hashes, pick_dtype

        folder = source.location
        self.source, self.family, self.engine_options = source, family, engine
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if options.device != "auto" and torch.device(options.device).type != self.device.type:
            raise ConfigError(
                f"this vLLM build runs on {self.device.type}, not --device {options.device}",
                "drop --device (vLLM places the model itself), or use --backend transformers",
            )
        self.dtype = pick_dtype(options.dtype, self.device)
        if self.dtype == torch.float64:
            raise ConfigError("the vllm backend runs float32, bfloat16 or float16", "pass --dtype float32")
        self.config = AutoConfig.from_pretrained(folder, trust_remote_code=options.trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=options.trust_remote_code)
        self.content_hash, self.hashes = content_hash(source), part_hashes(source)
        self.native_attention = _checkpoint_attention(Path(folder), config, family)
        self.native_scaling = family.native
        self._eos = _eos_ids(folder, self.config, self.tokenizer)

        from vllm import LLM

        kwargs = _engine_kwargs(engine, self.device)
        # vLLM counts the one token it must produce after a prompt: a sequence of exactly the limit
        # (a token-loss window, an answer fed whole) needs two positions more than evalkit uses
        text = self.config.get_text_config()
        limit = engine.max_model_len or getattr(text, "max_position_embeddings", None)
        if limit:
            kwargs["max_model_len"] = limit + 2
            os.environ.setdefault("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "1")  # the 2 extra positions only
        if family.scaled:
            kwargs["hf_overrides"] = {"architectures": [family.scaled]}
        log(f"starting vLLM on {folder} ({family.architecture}, {str(self.dtype).removeprefix('torch.')})")
        self.llm = LLM(
            model=folder,
            tokenizer=folder,
            dtype=str(self.dtype).removeprefix("torch."),
            trust_remote_code=options.trust_remote_code,
            seed=0,
            **kwargs,
        )
        self.max_positions = limit or self.llm.llm_engine.model_config.max_model_len
        record = getattr(self.config, "evalkit_reference", None) or {}
        length = record.get("train_length") or getattr(self.native_attention[0], "train_length", None)
        self.training_length = int(length) if length else None
        self.label = None
        spec, tables = self.native_attention
        if family.scaled and spec.variant != "softmax":  # a checkpoint trained with SSMax runs with it
            self._set(family.factors(spec, tables, self.config))

    def shutdown(self) -> None:
        """Stop the engine and free its memory, so another can start in this process."""
        import gc

        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()
        del llm
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()  # the single-process engine set these up in this process
        destroy_distributed_environment()
        gc.collect()

    def describe(self) -> dict:
        import vllm

        from evalkit.models.loading import tokenizer_identity

        native = self.native_scaling
        return {
            "name": self.source.name,
            "kind": self.source.kind,
            "location": self.source.location,
            "gguf_file": None,
            "content_hash": self.content_hash,
            "architecture": self.family.architecture,
            "parameters": _checkpoint_parameters(Path(self.source.location)),
            "max_position_embeddings": getattr(self.config, "max_position_embeddings", None),
            "training_length": self.training_length,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "config_changes": {},
            "native_scaling": native.to_dict() if native else None,
            "tokenizer": tokenizer_identity(self.tokenizer),
            "backend": self.name,
            "engine": {"vllm": vllm.__version__, **asdict(self.engine_options)},
        }

    def capabilities(self) -> Capabilities:
        declared = self.declared()
        return Capabilities(
            requests=declared.requests,
            variants=self.family.variants(),
            native=True,
            batches_itself=True,
            notes=declared.notes,
        )

    # -- attention variants -----------------------------------------------------------------
    def activate(self, variant) -> None:
        """Switch to a resolved variant (label, spec, tables). ``native`` is the model as vLLM ships
        it: identity factors, so a scaling vLLM's own code applies (Llama 4) runs alone."""
        spec = variant.spec
        self.family.refuse(spec.variant, n_mode=spec.n_mode)
        if self.family.scaled:
            self._set(self.family.factors(spec, variant.tables or {}, self.config))
        self.label = getattr(variant, "label", spec.variant)

    def _set(self, values: tuple[list, list, float]) -> None:
        from evalkit.backends.vllm_plugin import set_factors

        self.llm.apply_model(_Setter(*values, set_factors))
        # cached prefixes were computed under the variant before: they must not serve this one
        self.llm.reset_prefix_cache()

    # -- requests ---------------------------------------------------------------------------
    def handlers(self) -> dict:
        return {
            TokenLossRequest: self.token_losses,
            AnswerScoreRequest: self.score_answers,
            GenerateRequest: self.generate,
        }

    def generate(self, requests: list[GenerateRequest]) -> list[np.ndarray]:
        """Greedy continuations of prompts of any lengths, handed to the engine at once."""
        from vllm import SamplingParams

        eos = sorted(self._eos)
        params = [
            SamplingParams(temperature=0.0, max_tokens=r.max_new_tokens, stop_token_ids=eos, detokenize=False, seed=0)
            for r in requests
        ]
        outputs = self._run([r.prompt for r in requests], params)
        return [self._until_eos(np.asarray(out.outputs[0].token_ids, dtype=np.int64)) for out in outputs]

    def token_losses(self, requests: list[TokenLossRequest]) -> list[np.ndarray]:
        """NLL of tokens[1:] of each sequence, from prompt log-probs: shape (T-1,), float32."""
        outputs = self._prompt_logprobs([r.tokens for r in requests])
        return [-_gold(out, r.tokens, 1)[0] for out, r in zip(outputs, requests)]

    def score_answers(self, requests: list[AnswerScoreRequest]) -> list[AnswerScore]:
        """Log-probs and ranks of each gold answer's tokens after its prompt."""
        outputs = self._prompt_logprobs([np.concatenate([r.prompt, r.answer]) for r in requests])
        scores = []
        for out, r in zip(outputs, requests):
            logprobs, ranks = _gold(out, np.concatenate([r.prompt, r.answer]), len(r.prompt))
            scores.append(AnswerScore(logprobs, bool((ranks == 1).all()), int(ranks[0])))
        return scores

    def _prompt_logprobs(self, prompts: list[np.ndarray]):
        from vllm import SamplingParams

        # prompt_logprobs=0: each prompt token's own log-prob and rank, no top-k alternatives
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
        return self._run(prompts, [params] * len(prompts))

    def _run(self, prompts: list[np.ndarray], params: list) -> list:
        batch = [{"prompt_token_ids": [int(t) for t in p]} for p in prompts]
        return self.llm.generate(batch, params, use_tqdm=False)

    def _until_eos(self, new: np.ndarray) -> np.ndarray:
        stop = np.flatnonzero(np.isin(new, list(self._eos)))
        return new[: stop[0]] if len(stop) else new

    def eos_ids(self) -> set[int]:
        return set(self._eos)

    def batch_tokens(self) -> int:
        """The runner hands whole lists over (``batches_itself``): vLLM's scheduler sizes its own
        steps (``--max-num-batched-tokens``) against its KV cache; this only chunks progress."""
        return self.max_positions or 2048

    def attention_scale(self) -> float:
        """C in the runner's progress cost model, as the transformers backend computes it: P / d."""
        from evalkit.models.prefix_cost import layer_shape

        linear, attention_width = layer_shape(self.config.get_text_config())
        return linear / attention_width


def _gold(output, tokens: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-probs (float32) and ranks of ``tokens[start:]`` from a request's prompt log-probs."""
    entries = output.prompt_logprobs  # entry t: {token id: Logprob} for prompt token t; entry 0 is None
    logprobs = np.empty(len(tokens) - start, dtype=np.float32)
    ranks = np.empty(len(tokens) - start, dtype=np.int64)
    for i, t in enumerate(range(start, len(tokens))):
        entry = entries[t][int(tokens[t])]
        logprobs[i], ranks[i] = entry.logprob, entry.rank
    return logprobs, ranks


# -- model families ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """What the plugin can do for one checkpoint, read from its config.json before the engine starts."""

    architecture: str
    scaled: str | None  # the plugin's class for it, or None (stock vLLM only)
    native: Any  # a NativeScaling the modelling code applies itself, or None
    why: str  # why variants are out, when they are
    num_layers: int
    num_heads: int

    @classmethod
    def of(cls, config: dict) -> Family:
        from evalkit.backends.vllm_plugin import scaled_architecture

        text = config.get("text_config") or config
        architecture = (config.get("architectures") or ["?"])[0]
        native = _native_scaling(text)
        scaled, why = scaled_architecture(architecture), ""
        if native is not None:
            scaled, why = None, f"{architecture} scales q itself ({native.variant}): only native is exact"
        elif scaled is None:
            why = f"evalkit's vLLM plugin does not know {architecture}"
        elif "sliding_attention" in (text.get("layer_types") or []) or (
            text.get("sliding_window") and text.get("use_sliding_window", True) is not False
        ):
            scaled, why = None, f"{architecture} with a sliding window counts keys differently"
        return cls(
            architecture,
            scaled,
            native,
            why,
            int(text.get("num_hidden_layers") or 0),
            int(text.get("num_attention_heads") or 0),
        )

    def variants(self) -> frozenset[str]:
        return VARIANTS if self.scaled else frozenset()

    def refuse(self, variant: str, n_mode: str = "position") -> None:
        if variant in ("auto", "native"):
            return
        if variant not in VARIANTS:
            raise ConfigError(f"the vllm backend cannot apply attention variant {variant!r}", NOTES["variants"])
        if not self.scaled and not (variant == "softmax" and self.native is None):
            raise ConfigError(
                f"the vllm backend cannot apply {variant!r} to this model: {self.why}",
                "use --attention native, or --backend transformers",
            )
        if n_mode != "position":
            raise ConfigError(
                f"the vllm backend counts n by position only, not {n_mode!r}", "use --backend transformers"
            )

    def factors(self, spec, tables: dict, config) -> tuple[list, list, float]:
        """(s, b, floor) as (layers, heads) lists for ``vllm_plugin.set_factors``: the scalars of
        ``spec`` first, then ``tables`` (the checkpoint's, snapshotted at load), then ``spec.params_file``."""
        from evalkit.attention.apply import as_head_table, load_param_table, select_layers

        layers, heads = self.num_layers, self.num_heads
        spec = spec.with_defaults(config)
        identity = _full(layers, heads, 0.0), _full(layers, heads, 1.0), -math.inf
        if spec.variant in ("softmax", "native"):
            return identity
        tables = dict(tables or {})
        if spec.params_file and not tables:
            tables = load_param_table(spec.params_file)
        spec.require(set(tables))
        selected = set(select_layers(SimpleNamespace(config=config), spec.layers, layers))
        names = self.module_names()

        def table(param: str) -> list[list[float]]:
            value = getattr(spec, param)
            return as_head_table(tables[param] if value is None else value, param=param, names=names, num_heads=heads)

        if spec.variant == "logn":
            s, b, floor = _full(layers, heads, 1.0 / math.log(spec.train_length)), _full(layers, heads, 0.0), 1.0
        else:
            s, floor = table("s").tolist(), -math.inf
            b = table("b").tolist() if spec.variant == "ssmax-bias" else _full(layers, heads, 0.0)
        for layer in set(range(layers)) - selected:  # layers left out run plain softmax (logn's floor 1 keeps 1)
            s[layer], b[layer] = [0.0] * heads, [1.0] * heads
        return s, b, floor

    def module_names(self) -> list[str]:
        """The attention modules' names in a transformers state dict, which evalkit's tables use."""
        return [f"model.layers.{i}.self_attn" for i in range(self.num_layers)]


def _full(layers: int, heads: int, value: float) -> list[list[float]]:
    return [[value] * heads for _ in range(layers)]


def _native_scaling(text: dict):
    """The scaling a config switches on that the modelling code (vLLM's too) applies to q itself."""
    from evalkit.attention.native import NativeScaling

    if text.get("attn_temperature_tuning") and text.get("no_rope_layers") is not None:
        flags = text["no_rope_layers"]
        nope = tuple(i for i, f in enumerate(flags) if not int(f))
        params = {"attn_scale": text.get("attn_scale", 0.1), "floor_scale": text.get("floor_scale", 8192)}
        return NativeScaling("llama4-temp", params, "nope", nope, "config.attn_temperature_tuning")
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    if rope.get("llama_4_scaling_beta"):
        params = {"beta": rope["llama_4_scaling_beta"], "original_length": rope.get("original_max_position_embeddings")}
        layers = tuple(range(int(text.get("num_hidden_layers") or 0)))
        return NativeScaling("mistral-beta", params, "all", layers, "config.rope_parameters.llama_4_scaling_beta")
    return None


def _checkpoint_attention(folder: Path, config: dict, family: Family) -> tuple[Any, dict]:
    """The checkpoint's own attention (evalkit's record in config.json, per-head tensors from its
    safetensors files), as ``(AttentionSpec, {"s": (layers, heads) tensor, ...})``."""
    from evalkit.attention.apply import (
        CONFIG_KEY,
        TENSOR_NAMES,
        _checkpoint_files,
        _gather_state_dict_entries,
        _read_safetensors,
        as_head_table,
        spec_from_model,
    )

    record = config.get(CONFIG_KEY)
    spec = spec_from_model(SimpleNamespace(config=SimpleNamespace(**{CONFIG_KEY: record})))
    if not record:
        return spec, {}
    suffixes = tuple("." + attr for attr in TENSOR_NAMES.values())
    found = _gather_state_dict_entries(_read_safetensors(_checkpoint_files(folder), suffixes))
    for param, attr in TENSOR_NAMES.items():
        if attr in record.get("tensors", []) and param not in found:
            raise ModelLoadError(f"{folder} records {attr} but its safetensors files lack it", "re-save the checkpoint")
    names, heads = family.module_names(), family.num_heads
    return spec, {p: as_head_table(rows, param=p, names=names, num_heads=heads) for p, rows in found.items()}


def _eos_ids(folder: str, config, tokenizer) -> set[int]:
    """As the transformers backend: the generation config's end-of-sequence ids, else the tokenizer's."""
    eos = None
    path = Path(folder) / "generation_config.json"
    if path.is_file():
        eos = json.loads(path.read_text()).get("eos_token_id")
    if eos is None:
        eos = getattr(config, "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}


# -- the engine ---------------------------------------------------------------------------------


def _refuse_load_options(options, engine: VllmOptions) -> None:
    if any(v is not None for v in (options.rope or {}).values()):
        raise ConfigError("the vllm backend takes no --rope-* overrides", "use --backend transformers")
    if options.device_map:
        raise ConfigError(
            "the vllm backend splits models with --tensor-parallel-size, not --device-map", "drop --device-map"
        )
    for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
        if getattr(engine, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1", "e.g. 1")
    if engine.load_format not in ("auto", "safetensors", "dummy"):
        raise ConfigError(f"unknown --load-format {engine.load_format!r}", "use auto, safetensors or dummy")


def _set_engine_environment(engine: VllmOptions) -> None:
    """Environment vLLM reads at import: set before the first ``import vllm``; what the user set wins."""
    single = engine.tensor_parallel_size * engine.pipeline_parallel_size * engine.data_parallel_size == 1
    if single:
        # the engine in this process: starts in 4-7 s instead of 33-46 s on CPU, and apply_model
        # reaches the model without serializing a function to another process
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    else:
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # apply_model's function goes to workers
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")  # on CPU it would keep one core for itself
    # vLLM's CPU platform reads only this variable; left unset it sizes the cache by
    # --gpu-memory-utilization, 90% of the machine's RAM (measured: 22 of 24 GB for SmolLM2 at 4k)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(engine.kv_cache_gb or CPU_KV_CACHE_GB))))
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")  # evalkit prints its own progress


def _engine_kwargs(engine: VllmOptions, device) -> dict:
    single = engine.tensor_parallel_size * engine.pipeline_parallel_size * engine.data_parallel_size == 1
    kwargs: dict[str, Any] = {
        "enable_prefix_caching": engine.prefix_caching,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "pipeline_parallel_size": engine.pipeline_parallel_size,
        "data_parallel_size": engine.data_parallel_size,
        "enforce_eager": engine.enforce_eager,
        "load_format": engine.load_format,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
    }
    if single:
        kwargs["distributed_executor_backend"] = "uni"
    if engine.max_num_seqs:
        kwargs["max_num_seqs"] = engine.max_num_seqs
    if engine.max_num_batched_tokens:
        kwargs["max_num_batched_tokens"] = engine.max_num_batched_tokens
    if engine.kv_cache_gb is not None and device.type == "cuda":
        kwargs["kv_cache_memory_bytes"] = int(engine.kv_cache_gb * (1 << 30))
    return kwargs


def _checkpoint_parameters(folder: Path) -> int:
    """Parameters in the checkpoint's safetensors files (vLLM's CPU layers repack some weights, so
    counting the engine's own parameters undercounts); evalkit's per-head tensors left out."""
    from safetensors import safe_open

    from evalkit.attention.apply import _checkpoint_files
    from evalkit.backends.vllm_plugin import EVALKIT_TENSORS

    total = 0
    for file in _checkpoint_files(folder):
        with safe_open(str(file), framework="np") as handle:
            for key in handle.keys():
                if not key.endswith(EVALKIT_TENSORS):
                    total += int(np.prod(handle.get_slice(key).get_shape()))
    return total


@dataclass(frozen=True)
class _Setter:
    """``apply_model``'s function: a picklable call of ``vllm_plugin.set_factors`` with a variant's values."""

    s: list
    b: list
    floor: float
    set_factors: Any

    def __call__(self, model) -> int:
        return self.set_factors(model, self.s, self.b, self.floor)


def _folder_config(source, options) -> dict:
    """config.json of a checkpoint folder, after the loader's safety checks (safetensors, no remote code)."""
    from evalkit.models.loading import _check_hf_folder

    return _check_hf_folder(Path(source.location), options)
