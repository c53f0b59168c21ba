"""Resolving ``--model`` to a checkpoint and loading it safely.

Accepted: a local Hugging Face folder (config.json + safetensors + tokenizer), a ``.gguf`` file
or a folder holding one (de-quantized by transformers), an embedded alias (``smollm2-135m``),
and a hub id when the hub is reachable. Safe by default: safetensors only; pickle weights and
custom modelling code are refused unless the user passes ``--allow-pickle`` /
``--trust-remote-code``. Every refusal is a one-line ``ModelLoadError`` with the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.core.errors import ConfigError, ModelLoadError
from evalkit.core.paths import cache_dir
from evalkit.models import fetch

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "hf" | "gguf" | "hub"
    location: str  # folder, or hub id
    gguf_file: str | None = None
    name: str = ""


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"
    dtype: str = "auto"
    allow_pickle: bool = False
    trust_remote_code: bool = False
    rope: dict[str, Any] = field(default_factory=dict)  # theta / scaling / factor overrides
    device_map: str | None = None  # "auto": spread one large model over the visible GPUs (accelerate)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: ModelSource
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    content_hash: str
    config_changes: dict[str, Any] = field(default_factory=dict)
    # The checkpoint's own attention (spec, per-head tables) as loaded, before any switching.
    native_attention: tuple[Any, dict] = None
    hashes: dict[str, str | None] = field(default_factory=dict)  # sha256 of weights, config, tokenizer files

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    @property
    def native_scaling(self):
        """The scaling the checkpoint's own modelling code applies to q, as shipped (a
        ``NativeScaling``), or None; captured at load, before any variant switched it off."""
        from evalkit.attention import native_scaling

        return native_scaling(self.model)

    @property
    def training_length(self) -> int | None:
        """The context length the model was trained at, when its checkpoint records one.

        Read from the attention as loaded: switching to a variant (logn with --train-length)
        records that variant in the live config, which says nothing about training."""
        record = getattr(self.model.config, "evalkit_reference", None) or {}
        native = self.native_attention[0] if self.native_attention else None
        length = record.get("train_length") or getattr(native, "train_length", None)
        return int(length) if length else None

    def describe(self) -> dict:
        return {
            "name": self.source.name,
            "kind": self.source.kind,
            "location": self.source.location,
            "gguf_file": self.source.gguf_file,
            "content_hash": self.content_hash,
            "architecture": type(self.model).__name__,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "max_position_embeddings": self.max_positions,
            "training_length": self.training_length,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "config_changes": self.config_changes,
            "native_scaling": self.native_scaling.to_dict() if self.native_scaling else None,
            "tokenizer": tokenizer_identity(self.tokenizer),
        }


def tokenizer_identity(tokenizer) -> dict:
    """The tokenizer as the manifest records it: its content fingerprint (what --resume and compare's
    pairing check), and class, path and size for people."""
    from evalkit.data.corpus import tokenizer_fingerprint

    return {
        "class": type(tokenizer).__name__,
        "name_or_path": getattr(tokenizer, "name_or_path", None),
        "vocab_size": len(tokenizer),
        "content_hash": tokenizer_fingerprint(tokenizer),
    }


# Model types evalkit implements itself as plain torch modules, answered by the ``torch`` backend:
# model_type in config.json -> "module:function" that loads the folder (safetensors only).
NATIVE_MODEL_TYPES = {"multiscreen": "evalkit.models.multiscreen:load_checkpoint"}


def folder_model_type(spec: str) -> str | None:
    """``model_type`` of a local checkpoint folder's config.json, read without loading anything."""
    config = Path(spec).expanduser() / "config.json"
    try:
        return json.loads(config.read_text()).get("model_type") if config.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None  # the loader reports the corrupt file with its fix


def native_backend(spec: str) -> str | None:
    """ "torch" for a checkpoint of a model type evalkit implements itself, else None (transformers)."""
    return "torch" if folder_model_type(spec) in NATIVE_MODEL_TYPES else None


def resolve(spec: str, log=print) -> ModelSource:
    if spec in fetch.EMBEDDED:
        folder = fetch_embedded(spec, log=log)
        return ModelSource("hf", str(folder), name=spec)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(
                f"{spec} is a file but not a .gguf model",
                "pass a model folder (config.json + safetensors) or a .gguf file",
            )
        return ModelSource("gguf", str(path.parent), gguf_file=path.name, name=path.stem)
    if path.is_dir():
        if (path / "config.json").exists():
            return ModelSource("hf", str(path), name=path.resolve().name)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", str(path), gguf_file=ggufs[0].name, name=ggufs[0].stem)
        if len(ggufs) > 1:
            raise ModelLoadError(
                f"folder {spec} holds several .gguf files", "pass the file itself: --model " + str(ggufs[0])
            )
        raise ModelLoadError(
            f"folder {spec} is not a model (no config.json and no .gguf file)",
            "point --model at a Hugging Face model folder or a .gguf file",
        )
    looks_like_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not spec.endswith("/")
    if looks_like_hub_id and not _hub_offline():
        return ModelSource("hub", spec, name=spec)
    aliases = ", ".join(fetch.EMBEDDED)
    raise ModelLoadError(
        f"model {spec!r} not found: no such path",
        f"pass a local checkpoint folder or .gguf file, or an alias ({aliases})",
    )


def _hub_offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def pick_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device} asked for, but no CUDA device is visible", "use --device cpu or auto")
        try:
            parsed = torch.device(device)
        except RuntimeError:
            raise ConfigError(f"bad device {device!r}", "use auto, cpu, cuda or cuda:N") from None
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible",
                "pick an index below that",
            )
        return parsed
    raise ConfigError(f"bad device {device!r}", "use auto, cpu, cuda or cuda:N")


def pick_dtype(dtype: str, device):
    import torch

    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in table:
        raise ConfigError(f"bad dtype {dtype!r}", "use auto, float32, bfloat16, float16 or float64")
    return table[dtype]


def _check_hf_folder(folder: Path, options: LoadOptions) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelLoadError(
            f"{folder}/config.json is not valid JSON (corrupt checkpoint?)", "re-save or re-download the checkpoint"
        ) from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelLoadError(f"{folder}/config.json has no model_type", "this is not a transformers model folder")
    if config.get("auto_map") and not options.trust_remote_code:
        raise ModelLoadError(
            f"{folder} needs its own Python modelling code (auto_map in config.json)",
            "read that code, then pass --trust-remote-code to run it",
        )
    safetensors_files = sorted(folder.glob("*.safetensors"))
    pickle_files = sorted(p for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if not safetensors_files:
        if pickle_files and not options.allow_pickle:
            raise ModelLoadError(
                f"{folder} has only pickle weights ({pickle_files[0].name}), which can run arbitrary code when loaded",
                "convert it to safetensors, or pass --allow-pickle if you trust its source",
            )
        if not pickle_files:
            raise ModelLoadError(
                f"{folder} has no weight files (*.safetensors)", "point --model at a complete checkpoint folder"
            )
    from safetensors import safe_open

    for file in safetensors_files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as exc:
            raise ModelLoadError(
                f"corrupt safetensors file {file} ({str(exc)[:120]})", "re-save or re-download the checkpoint"
            ) from None
    return config


def load_model(spec: str, options: LoadOptions = LoadOptions(), log=print) -> LoadedModel:
    source = resolve(spec, log=log)
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    if source.kind == "hf":
        _check_hf_folder(Path(source.location), options)
    model, tokenizer, changes = _from_pretrained(source, dtype, options)
    if options.device_map:
        device = model.get_input_embeddings().weight.device  # inputs go where the first layer lives
    else:
        model.to(device)
    model.eval()
    from evalkit.attention import head_tables, native_scaling, spec_from_model

    native_scaling(model)  # captures the checkpoint's own q scaling before any variant switches it off
    if source.kind == "hf" and getattr(model.config, "evalkit_attention", None):
        from evalkit.attention import load_attention_from_checkpoint

        load_attention_from_checkpoint(model, source.location)  # a model trained with SSMax keeps it
    return LoadedModel(
        model,
        tokenizer,
        source,
        device,
        dtype,
        content_hash(source),
        changes,
        native_attention=(spec_from_model(model), head_tables(model)),
        hashes=part_hashes(source),
    )


def _from_pretrained(source: ModelSource, dtype, options: LoadOptions):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # evalkit draws its own progress; keep logs clean
    # evalkit's own per-head tensors (ssmax_s) are "unexpected" to a stock model class and
    # re-attached by load_attention_from_checkpoint: transformers' load report is noise here.
    hf_logging.set_verbosity_error()

    common: dict[str, Any] = {"trust_remote_code": options.trust_remote_code}
    if source.gguf_file:
        common["gguf_file"] = source.gguf_file
    try:
        config = AutoConfig.from_pretrained(source.location, **common)
        changes = {}
        if any(v is not None for v in options.rope.values()):
            from evalkit.attention.rope import override_rope

            changes = override_rope(config, **options.rope)  # before the rotary embedding is built
        placement = {"device_map": options.device_map} if options.device_map else {}
        with _quiet_gguf_conversion() if source.gguf_file else nullcontext():
            model = AutoModelForCausalLM.from_pretrained(
                source.location,
                config=config,
                dtype=dtype,
                attn_implementation="sdpa",
                **placement,
                use_safetensors=None if (options.allow_pickle or source.gguf_file) else True,
                **common,
            )
        tokenizer = AutoTokenizer.from_pretrained(source.location, **common)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        first = _first_line(exc)
        what = "GGUF file" if source.gguf_file else "checkpoint"
        raise ModelLoadError(
            f"cannot load {what} {source.location}{'/' + source.gguf_file if source.gguf_file else ''}: {first}",
            "check the files are complete and of a supported architecture",
        ) from None
    if source.gguf_file:
        _drop_gguf_markers(model)
    return model, tokenizer, changes


@contextmanager
def _quiet_gguf_conversion():
    """Without transformers' GGUF de-quantization bar. It is tqdm's own (not behind
    ``disable_progress_bar``), and in a log, where tqdm cannot redraw, it wrote one line per tensor."""
    from functools import partial

    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # a transformers without GGUF support has no bar to silence
        yield
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return
    gguf_utils.tqdm = partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def load_tokenizer_only(spec: str, log=print):
    """The tokenizer of a model spec (folder, .gguf, alias), without loading its weights."""
    from transformers import AutoTokenizer

    source = resolve(spec, log=log)
    try:
        return AutoTokenizer.from_pretrained(
            source.location, **({"gguf_file": source.gguf_file} if source.gguf_file else {})
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"cannot load the tokenizer of {spec}: {_first_line(exc)}",
            "point at a model folder that has tokenizer files",
        ) from None


def _first_line(exc: BaseException) -> str:
    """The first line of a library's error, for a one-line message."""
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]


def _drop_gguf_markers(model) -> None:
    # transformers keeps a GGUF "quantizer" on de-quantized models, which blocks save_pretrained
    # and marks the weights as quantized although they are plain tensors now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]


def fetch_embedded(alias: str, log=print) -> Path:
    """Make sure the embedded model is in the cache as a safetensors folder (de-quantized from its
    GGUF once); return the folder."""
    import torch

    target = fetch.cached_folder(fetch.embedded(alias).alias)
    if fetch.is_cached(alias):
        return target
    gguf_path = fetch.gguf_file(alias, log=log)
    log(f"de-quantizing {gguf_path.name} into {target} (once, ~30 s) ...")
    source = ModelSource("gguf", str(gguf_path.parent), gguf_file=gguf_path.name, name=gguf_path.stem)
    model, tokenizer, _ = _from_pretrained(source, torch.float32, LoadOptions())
    fetch.store_folder(model, tokenizer, target)
    return target


# What transformers reads to build a tokenizer, in any of its formats.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
)


def content_hash(source: ModelSource) -> str:
    """sha256 over the weight files (cached by path, size and mtime: hashing 500 MB takes seconds)."""
    if source.kind == "hub":
        return f"hub:{source.location}"
    folder = Path(source.location)
    return files_hash(
        [folder / source.gguf_file]
        if source.gguf_file
        else sorted(p for p in folder.iterdir() if p.suffix == ".safetensors" or p.suffix in _PICKLE_SUFFIXES)
    )


def part_hashes(source: ModelSource) -> dict[str, str | None]:
    """sha256 of each part a result depends on: weights, config.json, the tokenizer files.

    A GGUF file holds all three, so each is the file's hash; a hub model has no local files.
    """
    weights = content_hash(source)
    if source.kind == "hub" or source.gguf_file:
        return {"weights": weights, "config": weights, "tokenizer": weights}
    folder = Path(source.location)
    tokenizer = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    return {
        "weights": weights,
        "config": files_hash([folder / "config.json"]),
        "tokenizer": files_hash(tokenizer) if tokenizer else None,
    }


def files_hash(files: list[Path]) -> str:
    """sha256 over the files' names and bytes, in the order given; memoized by path, size and mtime."""
    stamp = json.dumps([[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files])
    memo = cache_dir("hashes") / (hashlib.sha256(stamp.encode()).hexdigest()[:24] + ".txt")
    if memo.exists():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    for file in files:
        if len(files) > 1:  # names too, so moving bytes from one file to another changes the hash
            digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    value = "sha256:" + digest.hexdigest()[:16]
    memo.write_text(value)
    return value


def wrap_model(model, tokenizer, name: str):
    """A ``LoadedModel`` for a model in memory: its own device and dtype, its current attention as
    the 'native' one (``auto``), and a content hash of its weights as they are now."""
    from evalkit.attention import head_tables, native_scaling, spec_from_model

    if not hasattr(model, "config") or not hasattr(model, "parameters"):
        raise ConfigError(
            f"the transformers backend got a {type(model).__name__}, not a transformers model",
            "pass a causal LM (AutoModelForCausalLM...), or backend='torch' for a module mapping ids to logits",
        )
    model = getattr(model, "module", model)  # DistributedDataParallel wraps the model it trains
    first = next(model.parameters())
    native_scaling(model)  # captured before any variant switches it off, as load_model does
    weights = state_hash(model)
    return LoadedModel(
        model,
        tokenizer,
        ModelSource("memory", name, name=name),
        first.device,
        first.dtype,
        weights,
        native_attention=(spec_from_model(model), head_tables(model)),
        hashes={"weights": weights, "config": _text_hash(model.config.to_json_string()), "tokenizer": None},
    )


def state_hash(model) -> str:
    """sha256 over the state dict's names, dtypes, shapes and bytes: what a resume checks for "the same weights"."""
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\0".encode())
            digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return "memory:sha256:" + digest.hexdigest()[:16]


def _text_hash(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
