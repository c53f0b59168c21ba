"""The Python API: ``evalkit.evaluate(model, tokenizer, task=...)`` on the model object a training
loop or a notebook holds, and ``evalkit.load_run(folder)``.

Why a second entry point next to ``evaluate(RunConfig)``: a training loop holds the model in
memory, and saving it to reload it costs a checkpoint write per evaluation (517 MB for SmolLM2).
This module wraps the object as the ``LoadedModel`` the engine runs on, so the rows are the ones
``evalkit run`` writes for the same weights, and hands the model back as it found it: attention
implementation and per-head tensors (the very Parameter objects an optimizer holds), training
flags, RNG state, device and parameters; nothing runs with gradients.

A run always has a folder (the journal is what makes it resumable): ``out=`` names it, else it
lives in a temporary folder until ``Run.save(path)`` copies it.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalkit.core.errors import ConfigError, ResultsError, did_you_mean

# Keywords of evaluate() that are not task options: attention flags (as the CLI's), then run settings.
ATTENTION_FLAGS = (
    "ssmax_s",
    "ssmax_b",
    "attention_params",
    "train_length",
    "ssmax_n",
    "attn_scale",
    "floor_scale",
    "beta",
    "original_length",
    "attention_layers",
)
RUN_SETTINGS = (
    "out",
    "resume",
    "name",
    "seed",
    "device",
    "dtype",
    "batch_tokens",
    "prefix_cache",
    "allow_extrapolation",
    "allow_pickle",
    "trust_remote_code",
    "rope_theta",
    "rope_scaling",
    "rope_factor",
    "calibrate_on",
    "progress",
    "plots",
    "distributed",
)


@dataclass
class Run:
    """One evaluation: its tidy rows, the summary (summary.csv: headline numbers per variant and
    length with n and 95% intervals), the manifest, the figures, and the folder they live in."""

    folder: Path
    rows: Any  # pandas DataFrame, the results.parquet table
    summary: Any  # pandas DataFrame or None (no rows)
    manifest: dict
    figures: list[Path] = field(default_factory=list)
    _scratch: Any = field(default=None, repr=False)  # the TemporaryDirectory holding an unsaved run

    @property
    def interrupted(self) -> bool:
        return bool(self.manifest.get("interrupted"))

    @property
    def task(self) -> str:
        return str(self.manifest.get("config", {}).get("task", ""))

    def headline(self) -> dict[str, float]:
        """The few numbers a training log wants, named ``<metric>@<length>`` (see ``evalkit.integrations``)."""
        from evalkit.report.headline import headline_metrics

        return headline_metrics(self.summary, self.task)

    def save(self, path: str | Path) -> Run:
        """Copy the run folder to ``path`` (new, or empty) and return the Run read from there.
        The rows keep their ``run_id``: it names the run, not the folder."""
        target = Path(path)
        if target.resolve() == self.folder.resolve():
            return self
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise ResultsError(
                f"cannot save the run to {target}: it exists and is not an empty folder", "choose a new folder"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(self.folder, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".evalkit.lock"))
        return load_run(target)


def load_run(path: str | Path) -> Run:
    """A run folder (written by ``evalkit run``, ``evaluate`` or ``Run.save``) back as a ``Run``."""
    import json

    import pandas as pd

    folder = Path(path)
    if not (folder / "results.parquet").is_file():
        raise ResultsError(
            f"{folder} is not an evalkit run folder (no results.parquet)",
            "pass a folder written by evalkit run, evalkit.evaluate or Run.save",
        )
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    except ValueError:
        raise ResultsError(f"{manifest_path} is corrupt", "rerun the task") from None
    summary_path = folder / "summary.csv"
    summary = pd.read_csv(summary_path) if summary_path.is_file() else None
    figures = sorted((folder / "plots").glob("*.png")) if (folder / "plots").is_dir() else []
    return Run(folder, pd.read_parquet(folder / "results.parquet"), summary, manifest, figures)


def known_options(task: str) -> list[str]:
    """Every keyword ``evaluate`` takes for ``task``: its task options, the attention flags, the run settings."""
    from evalkit.core.registry import get_task

    task_cls = get_task(task)
    return [f.name for f in dataclasses.fields(task_cls.Options)] + list(ATTENTION_FLAGS) + list(RUN_SETTINGS)


def evaluate(
    model_or_path: Any,
    tokenizer: Any = None,
    *,
    task: str = "needle",
    attention: str | Sequence[str] = "auto",
    out: str | Path | None = None,
    resume: bool = False,
    name: str | None = None,
    seed: int = 1234,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
    plots: bool = True,
    **options: Any,
) -> Run:
    """Evaluate a model object (with its tokenizer) or a checkpoint path on one task.

    ``model_or_path``: a transformers causal LM in memory, any causal LM ``torch.nn.Module`` mapping
    token ids (B, T) to logits (B, T, V) (answered by the ``torch`` backend; see
    ``evalkit.backends.torch_module`` for what such a module may declare), or anything ``--model``
    takes (folder, .gguf, alias). ``attention``: variants as in ``--attention`` ("softmax,ssmax" or a list);
    ``auto`` is the model's own. Every other keyword is a task option (``lengths="1k..8k"`` or
    ``lengths=[1024, 2048]``, ``trials=5``, ``depths=...``), an attention flag (``ssmax_s=0.43``,
    a list sweeps it; ``ssmax_b``, ``train_length``, ``attention_layers``, ...) or a run setting
    (``batch_tokens``, ``prefix_cache``, ``allow_extrapolation``, ``calibrate_on``; for a path
    also ``allow_pickle``, ``trust_remote_code``, ``rope_theta``, ...): the CLI's options with
    underscores. An unknown keyword raises ``ConfigError`` naming the known ones.

    A model object is evaluated where it is (its device and dtype; ``device``/``dtype`` apply to
    paths only) and left as found: attention, training flags, parameters, gradients, RNG state.
    ``name`` is the ``model`` column (default: the basename of ``config.name_or_path``).
    ``out``: the run folder (default: a temporary one; ``Run.save`` keeps it); ``resume`` continues it.
    ``distributed=True`` (a model object under torchrun): every rank calls this at once with its
    own copy and takes a shard of the samples, rank 0 writes the tables; by default the calling
    process runs the whole grid alone (rank 0 only, the others do not wait for it).
    """
    from evalkit.run.attention_flags import attention_flag_requests
    from evalkit.run.evaluate import RunConfig, check_config
    from evalkit.run.evaluate import evaluate as run_config

    names = known_options(task)
    unknown = sorted(set(options) - set(names))
    if unknown:
        hint = did_you_mean(unknown[0], names)
        raise ConfigError(
            f"unknown option(s) for evalkit.evaluate(task={task!r}): {', '.join(unknown)}",
            f"{hint}known: {', '.join(names)}",
        )
    flags = {k: options.pop(k) for k in ATTENTION_FLAGS if k in options}
    settings = {k: options.pop(k) for k in RUN_SETTINGS if k in options}
    task_options = {k: _option_value(k, v) for k, v in options.items()}
    in_memory = not isinstance(model_or_path, (str, Path))
    if in_memory and tokenizer is None:
        raise ConfigError(
            "evalkit.evaluate(model) needs the model's tokenizer", "pass it: evaluate(model, tokenizer, ...)"
        )
    settings_distributed = bool(settings.pop("distributed", False))
    rope = {
        "theta": settings.pop("rope_theta", None),
        "scaling": settings.pop("rope_scaling", None),
        "factor": settings.pop("rope_factor", None),
    }
    if in_memory and any(v is not None for v in rope.values()):
        raise ConfigError(
            "rope_theta/rope_scaling/rope_factor change how a model is built, so they apply to paths only",
            "save the model and pass its folder, or change its config yourself",
        )
    model_name = name or (_memory_name(model_or_path) if in_memory else str(model_or_path))
    scratch = None
    if out is None:
        if resume:
            raise ConfigError("resume=True needs out=", "give the folder of the run to continue")
        scratch = tempfile.TemporaryDirectory(prefix="evalkit-")
        out = Path(scratch.name) / f"{task}-{_slug(model_name)}"
    config = RunConfig(
        task=task,
        model=model_name,
        task_options=task_options,
        attention=attention_flag_requests(attention, **flags),
        rope=rope,
        out=str(out),
        resume=resume,
        device=device,
        dtype=dtype,
        seed=seed,
        quiet=not settings.pop("progress", progress),
        plots=settings.pop("plots", plots),
        **settings,
    )
    check_config(config)
    if not in_memory:
        outcome = run_config(config)
        return _run_from(outcome, scratch)
    with preserved(model_or_path):
        from evalkit.run.distributed import World, current_world
        from evalkit.run.evaluate import backend_for_object

        backend = backend_for_object(config, model_or_path, tokenizer)
        # in a data-parallel job this process runs alone unless asked to share the run across ranks
        world = current_world() if settings_distributed else World()
        outcome = run_config(config, backend=backend, world=world)
    return _run_from(outcome, scratch)


def _option_value(name: str, value: Any) -> Any:
    """Lists for the grid options the CLI takes as text (lengths=[1024, 2048] -> "1024,2048")."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


def _memory_name(model) -> str:
    path = getattr(getattr(model, "config", None), "name_or_path", "") or ""
    return Path(str(path).rstrip("/")).name or type(model).__name__


def _slug(name: str) -> str:
    from evalkit.run.evaluate import model_slug

    return model_slug(name) or "model"


def _run_from(outcome, scratch) -> Run:
    import json

    if outcome.frame is None:  # a non-zero rank of a distributed run: rank 0 writes and reports
        return Run(Path(outcome.folder), None, None, {}, [], scratch)
    manifest = json.loads((Path(outcome.folder) / "manifest.json").read_text())
    return Run(
        Path(outcome.folder),
        outcome.frame,
        outcome.summary,
        manifest,
        [p for p in outcome.plots if str(p).endswith(".png")],
        scratch,
    )


@contextmanager
def preserved(model) -> Iterator[None]:
    """Run the body, then give the model back as it was: every module's training flag and the RNG
    state; for a transformers model also its implementation, evalkit's attention record and module
    attributes, the same per-head tensor objects (Parameters an optimizer holds stay the ones it
    holds) and native scaling."""
    import torch

    model = getattr(model, "module", model)
    training = {name: m.training for name, m in model.named_modules()}
    rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    restore_attention = _attention_state(model) if hasattr(model, "config") else None
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if restore_attention:
            restore_attention()
        for name, module in model.named_modules():
            module.training = training.get(name, module.training)
        torch.random.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _attention_state(model):
    """What switching variants changes in a transformers model, captured; returns its restorer."""
    import copy

    from evalkit.attention.apply import _MODULE_ATTRS, CONFIG_KEY, TENSOR_NAMES, attention_modules
    from evalkit.attention.native import native_enabled, set_native

    implementation = model.config._attn_implementation
    base = model.__dict__.get("_evalkit_base_implementation")
    had_record = hasattr(model.config, CONFIG_KEY)
    record = copy.deepcopy(getattr(model.config, CONFIG_KEY, None)) if had_record else None
    native = native_enabled(model)
    modules = [m for _, m in attention_modules(model)]
    tensors = [{attr: _slot(m, attr) for attr in TENSOR_NAMES.values()} for m in modules]
    attrs = [{a: m.__dict__[a] for a in _MODULE_ATTRS if a in m.__dict__} for m in modules]

    def restore() -> None:
        for module, slots, values in zip(modules, tensors, attrs):
            for attr, slot in slots.items():
                _put_slot(module, attr, slot)
            for a in _MODULE_ATTRS:
                module.__dict__.pop(a, None)
            module.__dict__.update(values)
        if had_record:
            setattr(model.config, CONFIG_KEY, record)
        elif hasattr(model.config, CONFIG_KEY):
            delattr(model.config, CONFIG_KEY)
        set_native(model, native)
        if model.config._attn_implementation != implementation:
            model.set_attn_implementation(implementation)
        if base is None:
            model.__dict__.pop("_evalkit_base_implementation", None)
        else:
            model._evalkit_base_implementation = base

    return restore


def _slot(module, attr: str) -> tuple[str, Any, bool] | None:
    """(kind, the object, persistent) of a per-head tensor on a module, or None."""
    if attr in module._parameters:
        return ("parameter", module._parameters[attr], True)
    if attr in module._buffers:
        return ("buffer", module._buffers[attr], attr not in module._non_persistent_buffers_set)
    return None


def _put_slot(module, attr: str, slot) -> None:
    module._parameters.pop(attr, None)
    module._buffers.pop(attr, None)
    module._non_persistent_buffers_set.discard(attr)
    module.__dict__.pop(attr, None)
    if slot is None:
        return
    kind, tensor, persistent = slot
    if kind == "parameter":
        module.register_parameter(attr, tensor)
    else:
        module.register_buffer(attr, tensor, persistent=persistent)
