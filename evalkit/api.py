"""The Python API: ``evalkit.evaluate(model, tokenizer, task=...)`` on the model object a training
loop or a notebook holds, and ``evalkit.load_run(folder)``.

Why a second entry point next to ``evalkit.run.evaluate.execute(RunConfig)``: a training loop holds the model in
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
import inspect
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from evalkit.core import settings
from evalkit.core.errors import ConfigError, did_you_mean
from evalkit.store import run_folder

# Keywords of evaluate() that are not task options, from the run settings (evalkit.core.settings):
# the attention flags (as the CLI's), then every other run setting the API takes.
ATTENTION_FLAGS = tuple(n for n in settings.names(settings.API, "attention") if n != "attention")
RUN_SETTINGS = tuple(s.name for s in settings.settings_for(settings.API) if s.goes_to != "attention")


class Run(run_folder.Run):
    """One evaluation read back from its folder: ``evalkit.store.run_folder.Run`` (rows, summary.csv,
    manifest, figures, completeness, a short repr), plus the headline numbers a training log wants."""

    def headline(self) -> dict[str, float]:
        """The few numbers a training log wants, named ``<metric>@<length>`` (see ``evalkit.integrations``)."""
        from evalkit.report.headline import headline_metrics

        return headline_metrics(self.summary, self.task)


def load_run(path: str | Path) -> Run:
    """A run folder (written by ``evalkit run``, ``evaluate`` or ``Run.save``) back as a ``Run``."""
    return run_folder.load_run(path, cls=Run)


def known_options(task: str) -> list[str]:
    """Every keyword ``evaluate`` takes for ``task``: its task options, the attention flags, the run settings."""
    from evalkit.core.registry import get_task

    task_cls = get_task(task)
    return [f.name for f in dataclasses.fields(task_cls.Options)] + list(settings.names(settings.API))


def evaluate(model_or_path: Any, tokenizer: Any = None, *, task: str = "needle", **options: Any) -> Run:
    """Evaluate a model object (with its tokenizer) or a checkpoint path on one task.

    ``model_or_path``: a transformers causal LM in memory, any causal LM ``torch.nn.Module`` mapping
    token ids (B, T) to logits (B, T, V) (answered by the ``torch`` backend; see
    ``evalkit.backends.torch_module`` for what such a module may declare), or anything ``--model``
    takes (folder, .gguf, alias). ``attention``: variants as in ``--attention`` ("softmax,ssmax" or a list);
    ``auto`` is the model's own. Every other keyword is a task option (``lengths="1k..8k"`` or
    ``lengths=[1024, 2048]``, ``trials=5``, ``depths=...``), an attention flag (``ssmax_s=0.43``,
    a list sweeps it; ``ssmax_b``, ``train_length``, ``attention_layers``, ...) or a run setting
    (``batch_tokens``, ``prefix_cache``, ``allow_extrapolation``, ``calibrate_on``, ``backend``; for
    a path also ``device``, ``dtype``, ``device_map``, ``allow_pickle``, ``trust_remote_code``,
    ``rope_theta``, ...): the CLI's options with underscores, from one table
    (``evalkit.core.settings``). An unknown keyword raises ``ConfigError`` naming the known ones.

    A model object is evaluated where it is (its device and dtype; ``device``/``dtype`` apply to
    paths only) and left as found: attention, training flags, parameters, gradients, RNG state.
    ``name`` is the ``model`` column (default: the basename of ``config.name_or_path``).
    ``out``: the run folder (default: a temporary one; ``Run.save`` keeps it); ``resume`` continues it.
    ``progress=False`` runs quietly; ``plots=False`` draws no figures.
    ``distributed=True`` (a model object under torchrun): every rank calls this at once with its
    own copy and takes a shard of the samples, rank 0 writes the tables; by default the calling
    process runs the whole grid alone (rank 0 only, the others do not wait for it).
    """
    names = known_options(task)
    unknown = sorted(set(options) - set(names))
    if unknown:
        hint = did_you_mean(unknown[0], names)
        raise ConfigError(
            f"unknown option(s) for evalkit.evaluate(task={task!r}): {', '.join(unknown)}",
            f"{hint}known: {', '.join(names)}",
        )
    in_memory = not isinstance(model_or_path, (str, Path))
    if in_memory and tokenizer is None:
        raise ConfigError(
            "evalkit.evaluate(model) needs the model's tokenizer", "pass it: evaluate(model, tokenizer, ...)"
        )
    values = settings.check_settings({k: options.pop(k) for k in settings.names(settings.API) if k in options}, "api")
    rope = settings.rope_of(values)
    if in_memory and any(v is not None for v in rope.values()):
        raise ConfigError(
            "rope_theta/rope_scaling/rope_factor change how a model is built, so they apply to paths only",
            "save the model and pass its folder, or change its config yourself",
        )
    task_options = {k: _option_value(k, v) for k, v in options.items()}
    from evalkit.run.evaluate import check_task_options

    check_task_options(task, task_options, values["seed"], values["allow_extrapolation"])

    from evalkit.run.attention_flags import attention_flag_requests
    from evalkit.run.evaluate import RunConfig, check_checkpoint, check_config
    from evalkit.run.evaluate import execute as run_config

    model_name = values["name"] or (_memory_name(model_or_path) if in_memory else str(model_or_path))
    out, scratch = values["out"], None
    if out is None:
        scratch = tempfile.TemporaryDirectory(prefix="evalkit-")
        out = Path(scratch.name) / f"{task}-{_slug(model_name)}"
    fields = {s.name: values.get(s.name, s.default) for s in settings.config_fields()}
    config = RunConfig(
        task=task,
        model=model_name,
        task_options=task_options,
        attention=attention_flag_requests(values["attention"], **{k: values[k] for k in ATTENTION_FLAGS}),
        rope=rope,
        **{**fields, "out": str(out), "quiet": not values["progress"]},
    )
    check_config(config)
    if not in_memory:
        check_checkpoint(config)
        outcome = run_config(config)
        return _run_from(outcome, scratch)
    with preserved(model_or_path):
        from evalkit.run.distributed import World, current_world
        from evalkit.run.evaluate import backend_for_object

        backend = backend_for_object(config, model_or_path, tokenizer)
        # in a data-parallel job this process runs alone unless asked to share the run across ranks
        world = current_world() if values["distributed"] else World()
        outcome = run_config(config, backend=backend, world=world)
    return _run_from(outcome, scratch)


evaluate.__signature__ = inspect.Signature(
    [
        inspect.Parameter("model_or_path", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Any),
        inspect.Parameter("tokenizer", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Any, default=None),
        inspect.Parameter("task", inspect.Parameter.KEYWORD_ONLY, annotation=str, default="needle"),
        *[
            inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, annotation=s.type, default=s.default)
            for s in settings.settings_for(settings.API)
        ],
        inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD, annotation=Any),
    ],
    return_annotation="Run",
)


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
    if outcome.frame is None:  # a non-zero rank of a distributed run: rank 0 writes and reports
        return Run(Path(outcome.folder), None, {}, [], scratch)
    return dataclasses.replace(load_run(outcome.folder), scratch=scratch)  # what load_run reads back later


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
