"""The run settings: one typed description of everything a run takes besides its task's options.

`evalkit run TASK`'s options (and their help panels), the keywords of ``evalkit.evaluate(...)``,
what ``evalkit track`` and a sweep TOML accept, and the fields of ``RunConfig`` are all made from
``SETTINGS`` below, so a setting is added, documented and checked in one place. Each setting says
where it is accepted (``where``) and where its value goes (``goes_to``): a ``RunConfig`` field, an
``--attention`` flag (turned into variant requests), a RoPE override, the model list, or the API's
own handling.

Every check here runs without torch (and without reading a checkpoint), so a mistyped option is
refused in well under a second; what needs the checkpoint (layers, positions) is checked against its
config.json by ``evalkit.run.evaluate.check_checkpoint`` before any weights load.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from evalkit.core.errors import ConfigError, ResultsError

# help panels of `evalkit run TASK --help`, in the order they are shown (a task's own options go to TASK)
MODEL, ATTENTION, TASK, OUTPUT = "Model and device", "Attention", "Task", "Output"
PANELS = (MODEL, ATTENTION, TASK, OUTPUT)

# where a setting is accepted
CLI, API, TRACK, SWEEP = "cli", "api", "track", "sweep"
EVERYWHERE = frozenset({CLI, API, TRACK, SWEEP})


@dataclass(frozen=True)
class Setting:
    name: str
    type: Any  # the value's Python type (Optional[...] when the default is None)
    default: Any
    help: str
    panel: str
    goes_to: str = "config"  # config (a RunConfig field), attention (a flag), rope (RunConfig.rope[key]), model, api
    where: frozenset[str] = EVERYWHERE
    choices: tuple[str, ...] | None = None
    check: Callable[[Setting, Any], None] | None = None  # raises ConfigError; never imports torch
    identity: bool = False  # changes the rows: a resume must give the same value (RunConfig.identity)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def rope_key(self) -> str:
        return self.name.removeprefix("rope_")


# --- checks (each gets the setting and a value that is not None) -------------------------------------


def _positive_int(setting: Setting, value) -> None:
    if value < 1:
        raise ConfigError(f"bad {setting.flag} {value}", "give a positive whole number")


def _number_at_least_one(setting: Setting, value) -> None:
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"bad {setting.flag} {value}", "give a number >= 1")


def _device(setting: Setting, value) -> None:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise ConfigError(f"bad device {value!r} for {setting.flag}", "use auto, cpu, cuda or cuda:N")


def _backend(setting: Setting, value) -> None:
    from evalkit.core.registry import BACKENDS

    known = ["auto", *BACKENDS.names()]
    if value not in known:
        from evalkit.core.errors import did_you_mean

        raise ConfigError(f"unknown {setting.flag} {value!r}", f"{did_you_mean(value, known)}known: {', '.join(known)}")


def _models(setting: Setting, value) -> None:
    if not value:
        raise ConfigError("no --model given", "give a checkpoint folder, .gguf file or alias")
    twice = next((m for m in value if list(value).count(m) > 1), None)
    if twice is not None:
        raise ConfigError(f"--model {twice} is given twice", "give each model once")


def _writable_place(setting: Setting, value) -> None:
    """--out must be a folder evalkit can create and write on a real filesystem: found by creating (and
    removing) a probe folder in its nearest existing parent, since /proc or a read-only mount pass
    os.access checks for root and fail only at the first write."""
    folder = Path(value).expanduser()
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        what = "is a file" if existing == folder else f"is inside {existing}, which is a file"
        raise ResultsError(f"{setting.flag} {value} {what}", "give a folder path")
    try:
        Path(tempfile.mkdtemp(prefix=".evalkit-probe-", dir=existing)).rmdir()
    except OSError as exc:
        raise ResultsError(
            f"cannot write {setting.flag} {value}: making a folder in {existing} failed ({exc.strerror or exc})",
            "choose a writable folder on a disk, e.g. --out results/my-run",
        ) from None


def _layers(setting: Setting, value) -> None:
    from evalkit.core.grid import canonical_layers

    canonical_layers(value)


def _choices(setting: Setting, value) -> None:
    if value not in setting.choices:
        raise ConfigError(f"bad {setting.flag} {value!r}", f"use one of: {', '.join(setting.choices)}")


# --- the table ---------------------------------------------------------------------------------------

_NOT_SWEPT = frozenset({CLI, API, TRACK})  # a sweep gives these per cell: [[attention]] tables, seeds, out

SETTINGS: tuple[Setting, ...] = (
    # model and device
    Setting(
        "model",
        list[str],
        ["smollm2-135m"],
        "Model folder (config.json + safetensors), .gguf file or folder, alias (smollm2-135m), or hub id; repeat "
        "for several models (one run folder each, under --out).",
        MODEL,
        goes_to="model",
        where=frozenset({CLI}),
        check=_models,
    ),
    Setting(
        "backend",
        str,
        "auto",
        "What answers the task's requests: a name from evalkit backends; auto: by the checkpoint (transformers for "
        "a checkpoint folder).",
        MODEL,
        check=_backend,
    ),
    Setting("device", str, "auto", "auto, cpu, cuda or cuda:N.", MODEL, check=_device),
    Setting(
        "device_map",
        Optional[str],
        None,
        "Spread one large model over the visible GPUs (accelerate): auto, balanced, balanced_low_0 or sequential.",
        MODEL,
        choices=("auto", "balanced", "balanced_low_0", "sequential"),
    ),
    Setting(
        "dtype",
        str,
        "auto",
        "auto = bfloat16 on CUDA, float32 on CPU.",
        MODEL,
        choices=("auto", "float32", "bfloat16", "float16"),
        identity=True,
    ),
    Setting(
        "batch_tokens",
        Optional[int],
        None,
        "Tokens per batch (default: from free device memory); halves on out-of-memory.",
        MODEL,
        check=_positive_int,
    ),
    Setting(
        "prefix_cache",
        bool,
        True,
        "Compute a prompt prefix that several samples share once, on one KV cache (needle depths of a trial), for "
        "the groups where a cost measured on the model at the start says it beats batched passes.",
        MODEL,
    ),
    Setting("allow_pickle", bool, False, "Allow pickle (.bin) checkpoints, which can run code when loaded.", MODEL),
    Setting("trust_remote_code", bool, False, "Allow checkpoints that ship their own modelling code.", MODEL),
    Setting(
        "rope_theta",
        Optional[float],
        None,
        "Override the RoPE base theta at evaluation time.",
        MODEL,
        goes_to="rope",
        check=_number_at_least_one,
    ),
    Setting(
        "rope_scaling",
        Optional[str],
        None,
        "RoPE scaling: linear, dynamic, yarn (each needs --rope-factor) or none.",
        MODEL,
        goes_to="rope",
        choices=("linear", "dynamic", "yarn", "none"),
    ),
    Setting(
        "rope_factor",
        Optional[float],
        None,
        "RoPE scaling factor (with --rope-scaling).",
        MODEL,
        goes_to="rope",
        check=_number_at_least_one,
    ),
    # attention
    Setting(
        "attention",
        str,
        "auto",
        "Attention variant(s), comma-separated; auto = the checkpoint's own (its evalkit variant, else native).",
        ATTENTION,
        goes_to="attention",
    ),
    Setting(
        "ssmax_s",
        Optional[str],
        None,
        "SSMax scale s for every head (default: the checkpoint's per-head values); a list 0.3,0.4,0.5 runs one "
        "variant per value (a calibration sweep). So do the other variant parameters below.",
        ATTENTION,
        goes_to="attention",
        where=_NOT_SWEPT,
    ),
    Setting(
        "ssmax_b",
        Optional[str],
        None,
        "SSMax bias b for every head (ssmax-bias).",
        ATTENTION,
        goes_to="attention",
        where=_NOT_SWEPT,
    ),
    Setting(
        "attention_params",
        Optional[str],
        None,
        "Per-layer/head s and b tables: a .json or .safetensors file.",
        ATTENTION,
        goes_to="attention",
        where=_NOT_SWEPT,
    ),
    Setting(
        "train_length",
        Optional[str],
        None,
        "Training context length L for logn (default: max_position_embeddings).",
        ATTENTION,
        goes_to="attention",
        where=_NOT_SWEPT,
    ),
    Setting(
        "ssmax_n",
        Optional[str],
        None,
        "n convention: position (keys query i may see) or length (whole row) [default: the checkpoint's, else "
        "position].",
        ATTENTION,
        goes_to="attention",
        where=_NOT_SWEPT,
        choices=("position", "length"),
    ),
    Setting(
        "attn_scale",
        Optional[str],
        None,
        "llama4-temp: attn_scale [default 0.1].",
        ATTENTION,
        goes_to="attention",
        where=_NOT_SWEPT,
    ),
    Setting(
        "floor_scale",
        Optional[str],
        None,
        "llama4-temp: floor_scale in tokens [default 8192].",
        ATTENTION,
        goes_to="attention",
        where=_NOT_SWEPT,
    ),
    Setting(
        "beta",
        Optional[str],
        None,
        "mistral-beta: beta [default 0.1].",
        ATTENTION,
        goes_to="attention",
        where=_NOT_SWEPT,
    ),
    Setting(
        "original_length",
        Optional[str],
        None,
        "mistral-beta: original length L0 [default: max_position_embeddings].",
        ATTENTION,
        goes_to="attention",
        where=_NOT_SWEPT,
    ),
    Setting(
        "attention_layers",
        Optional[str],
        None,
        "Layers the variant is on: all, nope, rope (by the config's no_rope_layers) or indices like 0,2,5; the "
        "others run softmax [default: all].",
        ATTENTION,
        goes_to="attention",
        where=_NOT_SWEPT,
        check=_layers,
    ),
    Setting(
        "calibrate_on",
        Optional[str],
        None,
        "With a sweep: choose each value on other samples, seed:N or dataset:PATH, run first into "
        "<out>-calibration [default: chosen on the evaluation data, marked as an oracle].",
        ATTENTION,
        where=frozenset({CLI, API}),
    ),
    # task
    Setting(
        "seed",
        int,
        1234,
        "Seed for sample selection (the same seed gives the same prompts).",
        TASK,
        where=_NOT_SWEPT,
        identity=True,
    ),
    Setting("allow_extrapolation", bool, False, "Run context lengths above the model's max_position_embeddings.", TASK),
    # output
    Setting(
        "out",
        Optional[str],
        None,
        "Run folder (default results/<task>-<model>-<time>).",
        OUTPUT,
        where=frozenset({CLI, API}),
        check=_writable_place,
    ),
    Setting(
        "resume",
        bool,
        False,
        "Continue the run in --out, skipping finished samples.",
        OUTPUT,
        where=frozenset({CLI, API}),
    ),
    Setting(
        "quiet",
        bool,
        False,
        "No progress bar, heartbeat lines or tables (a log without --quiet gets a progress line every 30 s).",
        OUTPUT,
        where=frozenset({CLI, TRACK}),
    ),
    Setting("plots", bool, True, "Draw the run's figures into <out>/plots.", OUTPUT, where=frozenset({CLI, API})),
    # the Python API's own: it runs a model object where it is, inside someone else's program
    Setting("progress", bool, True, "Show progress (the CLI's --quiet, inverted).", OUTPUT, "api", frozenset({API})),
    Setting(
        "name", Optional[str], None, "The model column (default: the model's name).", OUTPUT, "api", frozenset({API})
    ),
    Setting(
        "distributed",
        bool,
        False,
        "Under torchrun: every rank takes a shard of the samples (a model object only).",
        OUTPUT,
        "api",
        frozenset({API}),
    ),
)
BY_NAME = {s.name: s for s in SETTINGS}


def settings_for(where: str, goes_to: str | None = None) -> list[Setting]:
    """The settings accepted at ``where`` (cli, api, track, sweep), optionally only those going to ``goes_to``."""
    return [s for s in SETTINGS if where in s.where and (goes_to is None or s.goes_to == goes_to)]


def names(where: str, goes_to: str | None = None) -> tuple[str, ...]:
    return tuple(s.name for s in settings_for(where, goes_to))


def config_fields() -> list[Setting]:
    """The settings that are ``RunConfig`` fields, in table order."""
    return [s for s in SETTINGS if s.goes_to == "config"]


def check_settings(values: dict[str, Any], where: str | None = None) -> dict[str, Any]:
    """Check the given settings (names as in ``SETTINGS``) and return them with every other setting
    accepted at ``where`` (None: anywhere) filled in with its default. Runs no model code and imports
    no torch."""
    accepted = {s.name: s for s in (SETTINGS if where is None else settings_for(where))}
    unknown = sorted(set(values) - set(accepted))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}", f"known: {', '.join(accepted)}")
    out = {}
    for name, setting in accepted.items():
        value = values.get(name, setting.default)
        out[name] = value
        if value is None or name not in values:
            continue
        value = _typed(setting, value)
        out[name] = value
        if setting.choices:
            _choices(setting, value)
        if setting.check:
            setting.check(setting, value)
    _check_together(out)
    return out


def _typed(setting: Setting, value):
    """A value of the setting's type (a sweep TOML or a Python caller may give anything)."""
    kind = next((a for a in getattr(setting.type, "__args__", ()) if a is not type(None)), setting.type)
    if setting.goes_to in ("attention", "model"):  # flags take text or lists (ssmax_s=[0.3, 0.4]); checked later
        return value
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        value = os.fspath(value) if kind is str and isinstance(value, os.PathLike) else value
        ok = isinstance(value, kind)
    if not ok:
        raise ConfigError(f"bad {setting.flag} {value!r}", f"give a {getattr(kind, '__name__', kind)}")
    return value


def _check_together(values: dict[str, Any]) -> None:
    """Rules between settings."""
    scaling, factor = values.get("rope_scaling"), values.get("rope_factor")
    if factor is not None and scaling in (None, "none"):
        raise ConfigError("--rope-factor needs a scaling", "add --rope-scaling linear, dynamic or yarn")
    if scaling in ("linear", "dynamic", "yarn") and factor is None:
        raise ConfigError(f"--rope-scaling {scaling} needs a factor", "add e.g. --rope-factor 4")
    if values.get("resume") and "out" in values and values.get("out") is None:
        raise ConfigError("--resume needs --out", "give the folder of the run to continue")


def rope_of(values: dict[str, Any]) -> dict[str, Any]:
    """RunConfig.rope from the settings: {"theta": ..., "scaling": ..., "factor": ...}."""
    return {s.rope_key: values.get(s.name) for s in SETTINGS if s.goes_to == "rope"}
