"""One evaluation run, end to end: load, build samples, run, write tables, manifest and plots.

The CLI is a thin layer over ``execute(RunConfig)``; tests and notebooks call it directly.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evalkit.core import settings
from evalkit.core.backend import DEFAULT as DEFAULT_BACKEND
from evalkit.core.errors import ConfigError, DataError
from evalkit.core.metrics import records as metric_records
from evalkit.core.registry import get_task
from evalkit.core.task import TaskContext


class _RunConfig:
    """What one evaluation run is asked to do: the task and its options, the model, the attention
    variants (``VariantRequest`` dicts: name, label, s, b, ...), RoPE overrides (theta / scaling /
    factor), the backend's own settings (its Options), and one field per run setting of
    ``evalkit.core.settings`` (backend, device, dtype, seed, out, ...; made from that table below, so
    the CLI, the API, track and sweeps cannot drift from it)."""

    def identity(self) -> dict[str, Any]:
        """What must match for ``--resume`` to continue a run: every option that changes rows (the
        grid and every task option, defaults filled in), the model, dtype, seed, RoPE and each
        variant's settings. Speed knobs (device, batch tokens, prefix cache) may change, and so may
        summary options (they change the tables drawn from the rows, not the rows). Variants may
        be added (see ``results._differences``); the tokenizer is checked after the load."""
        task_cls = get_task(self.task)
        summary_only = {f.name for f in dataclasses.fields(task_cls.Options) if f.metadata.get("summary")}
        options = {
            k: v
            for k, v in dataclasses.asdict(build_options(task_cls, self.task_options)).items()
            if k not in summary_only
        }
        attention = {a.get("label") or a["name"]: {k: v for k, v in a.items() if k != "label"} for a in self.attention}
        fixed = {
            "task": self.task,
            "model": self.model,
            **{s.name: getattr(self, s.name) for s in settings.config_fields() if s.identity},
            "attention": attention,
            "rope": {k: v for k, v in self.rope.items() if v is not None},
        }
        return {**fixed, **{(f"task.{k}" if k in fixed else k): v for k, v in options.items()}}


RunConfig = dataclasses.make_dataclass(
    "RunConfig",
    [
        ("task", str),
        ("model", str),
        ("task_options", dict[str, Any], field(default_factory=dict)),
        ("attention", tuple[dict[str, Any], ...], field(default=({"name": "auto"},))),
        ("rope", dict[str, Any], field(default_factory=dict)),
        ("backend_options", dict[str, Any], field(default_factory=dict)),  # the backend's own settings (its Options)
        *[(s.name, s.type, field(default=s.default)) for s in settings.config_fields()],
    ],
    bases=(_RunConfig,),
    frozen=True,
    namespace={"__doc__": _RunConfig.__doc__},
)
RunConfig.__module__ = __name__


@dataclass
class RunOutcome:
    folder: Path
    frame: Any
    summary: Any
    plots: list[Path]
    interrupted: bool
    tokens_per_second: float


def build_options(task_cls, values: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(task_cls.Options)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown option(s) for task {task_cls.name}: {', '.join(unknown)}", f"valid: {', '.join(sorted(names))}"
        )
    for f in dataclasses.fields(task_cls.Options):
        choices = f.metadata.get("choices")
        if choices and f.name in values and values[f.name] not in choices:
            raise ConfigError(
                f"bad --{f.name.replace('_', '-')} {values[f.name]!r}", f"use one of: {', '.join(choices)}"
            )
    return task_cls.Options(**values)


def model_slug(model: str) -> str:
    """A folder-safe short name for a model spec: ckpt/ref/ssmax/ -> ssmax."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model.rstrip("/")).name or model).strip("-")[:40]


def model_folders(models: list[str]) -> list[str]:
    """One distinct folder name per model spec: the basename, widened to parent folders where two
    basenames collide (a/ckpt, b/ckpt -> a-ckpt, b-ckpt). Depends only on the specs, so a resume
    with the same --model list finds the same folders."""
    if len(set(models)) < len(models):
        twice = next(m for m in models if models.count(m) > 1)
        raise ConfigError(f"--model {twice} is given twice", "give each model once")
    parts = [[p for p in Path(m.rstrip("/")).parts if p not in ("/", ".", "..")] or [m] for m in models]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = [model_slug("-".join(p[-depth:])) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{model_slug(m)}-{k}" for k, m in enumerate(models)]  # specs that differ only in punctuation


def _stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def default_parent(task: str) -> Path:
    """Where several models' run folders go when --out is not given."""
    return Path("results") / f"{task}-{_stamp()}"


def default_out(task: str, model: str) -> Path:
    return Path("results") / f"{task}-{model_slug(model)}-{_stamp()}"


def backend_class(config: RunConfig):
    """The backend class a run uses: the one named, or for ``auto`` the one the checkpoint needs
    (read from its config.json, before anything loads)."""
    from evalkit.core.backend import get_backend
    from evalkit.models.loading import native_backend

    name = config.backend if config.backend != "auto" else native_backend(config.model) or DEFAULT_BACKEND
    return get_backend(name)


def backend_options(config: RunConfig, backend_cls):
    """The backend's own settings as its Options dataclass (unknown keys refused with the valid ones)."""
    fields = {f.name for f in dataclasses.fields(backend_cls.Options)} if backend_cls.Options else set()
    unknown = sorted(set(config.backend_options) - fields)
    if unknown:
        raise ConfigError(
            f"unknown option(s) for the {backend_cls.name} backend: {', '.join(unknown)}",
            f"valid: {', '.join(sorted(fields)) or 'none'}",
        )
    return backend_cls.Options(**config.backend_options) if backend_cls.Options else None


def backend_for_object(config: RunConfig, model, tokenizer):
    """A backend over a model object in memory: for ``auto``, transformers for a transformers model,
    the torch backend for any other module that maps ids to logits."""
    from evalkit.core.backend import get_backend

    name = config.backend
    if name == "auto":
        name = DEFAULT_BACKEND if hasattr(model, "config") and hasattr(model, "get_output_embeddings") else "torch"
    backend_cls = get_backend(name)
    options = backend_options(config, backend_cls)
    return backend_cls.wrap(model, tokenizer, config.model, options)


def refuse_unsupported(config: RunConfig, task_cls, options, backend=None) -> None:
    """What the run asks that its backend cannot do, refused in one line: before loading from what the
    backend declares, after loading (``backend``) from what the loaded model can do."""
    from evalkit.core.backend import refuse_unsupported as refuse

    kinds = set(task_cls.request_kinds(options))
    if backend is None:
        backend_cls, variants = backend_class(config), [a["name"] for a in config.attention]
        refuse(backend_cls, kinds, variants)
        backend_cls.check_model(config.model, variants, load_options(config))
        return
    capabilities = backend.capabilities()
    for kind in sorted(kinds - capabilities.requests):
        raise ConfigError(
            f"the {backend.name} backend cannot answer {kind} requests for this model",
            capabilities.notes.get(kind, f"use --backend {DEFAULT_BACKEND}"),
        )


def load_options(config: RunConfig):
    from evalkit.models.loading import LoadOptions

    return LoadOptions(
        config.device,
        config.dtype,
        config.allow_pickle,
        config.trust_remote_code,
        rope=config.rope,
        device_map=config.device_map,
    )


def load_for(config: RunConfig, log=print):
    """The backend a run config asks for, with its model loaded once (a sweep reuses it across tasks)."""
    backend_cls = backend_class(config)
    return backend_cls.load(config.model, load_options(config), backend_options(config, backend_cls), log=log)


def execute(config: RunConfig, console=None, backend=None, world=None) -> RunOutcome:
    """Validate, then touch disk, then load: every check that needs no model runs before the run
    folder is created or the model loaded, and the folder is created only once the run can start.

    ``backend``: a backend with its model already loaded (a sweep's, or a model object from ``evalkit.api``);
    ``world``: the ranks sharing the run (default: the launcher's; ``World()`` runs this process
    alone, as a rank-0-only evaluation inside a data-parallel training job must)."""
    from rich.console import Console

    from evalkit.run.attention_flags import VariantRequest, prefix_limits, resolve_variants
    from evalkit.run.distributed import current_world
    from evalkit.store.manifest import git_dirty, git_revision, library_versions
    from evalkit.store.results import check_out_folder, read_manifest

    console = console or Console(stderr=True, markup=False, emoji=False)
    log = (lambda *a: None) if config.quiet else console.print
    started_at = datetime.now(timezone.utc)
    task_cls = get_task(config.task)
    options = build_options(task_cls, config.task_options)
    if config.batch_tokens is not None and config.batch_tokens < 1:
        raise ConfigError(f"bad --batch-tokens {config.batch_tokens}", "give a positive number of tokens")
    requests = [VariantRequest.from_dict(a) for a in config.attention]

    model_free = task_cls.model_free(options)
    world = world or current_world()
    if world.size > 1:  # one GPU per process; rank 0 alone reports progress
        config = dataclasses.replace(
            config, device=world.device(config.device), quiet=config.quiet or not world.is_main
        )
    folder = world.broadcast(
        Path(config.out) if config.out else default_out(config.task, "analytic" if model_free else config.model)
    )
    identity = config.identity()
    check_inputs(task_cls, options, config)
    if not model_free:  # a model-free run asks no backend for anything
        refuse_unsupported(config, task_cls, options)
    if world.is_main:
        check_out_folder(folder, identity, config.resume)
    manifest = {
        "run_id": folder.name,
        "command": sys.argv,
        "config": dataclasses.asdict(config),
        "task_options": dataclasses.asdict(options),
        "versions": library_versions(),
        "seed": config.seed,
        "git_revision": git_revision(),
        "git_dirty": git_dirty(),
        "started_at": started_at.isoformat(),
    }
    if model_free:
        task = task_cls(options, TaskContext(None, None, config.allow_extrapolation, config.seed))
        store = _open_store(world, folder, identity, config.resume)
        try:
            for label, sample_id, rows in task.model_free_rows(next(iter(config.attention), {})):
                if not store.is_done(label, sample_id):
                    store.append(label, sample_id, rows)
            store.close_journal()
            return _finish(
                store,
                task,
                manifest,
                {"run_id": store.run_id, "task": task.name, "model": "none (analytic)"},
                "analytic",
                interrupted=False,
                tokens_per_second=0.0,
                timings={},
            )
        finally:
            store.close()

    load_started = time.perf_counter()
    backend = backend or load_for(config, log)
    refuse_unsupported(config, task_cls, options, backend)
    load_seconds = time.perf_counter() - load_started
    stored = read_manifest(folder) if config.resume and world.is_main else {}
    stored_hash = stored.get("model", {}).get("content_hash")
    if stored_hash and stored_hash != backend.content_hash:
        raise ConfigError(
            f"the weights of {config.model} changed since the run in {folder} started ({stored_hash} -> "
            f"{backend.content_hash})",
            "resume with the same checkpoint, or choose another --out",
        )
    stored_tokenizer = (stored.get("model", {}).get("tokenizer") or {}).get("content_hash")
    if stored_tokenizer and stored_tokenizer != backend.describe()["tokenizer"]["content_hash"]:
        raise ConfigError(
            f"the tokenizer of {config.model} changed since the run in {folder} started",
            "resume with the same tokenizer files, or choose another --out",
        )
    variants = resolve_variants(backend, requests)
    calibrated = _calibrate(config, task_cls, backend, console, folder)

    task = task_cls(
        options,
        TaskContext(
            backend.tokenizer,
            backend.max_positions,
            config.allow_extrapolation,
            config.seed,
            backend.training_length,
            prefix_limits(backend.config, variants),
        ),
    )
    samples = task.samples()
    _check_lengths(samples, backend.max_positions, config.allow_extrapolation)
    for aux in task.auxiliary_runs():  # another model's rows the task needs first (LongPPL's --evaluator)
        task.auxiliary[aux.name] = run_auxiliary(aux, config, backend, folder, console, log)
    created = not folder.exists()
    store = _open_store(world, folder, identity, config.resume)
    try:
        from evalkit.run.calibration import finalize

        outcome = _run(
            config,
            store,
            backend,
            variants,
            task,
            samples,
            manifest,
            console,
            world,
            {"load_seconds": round(load_seconds, 2)},
        )
        return finalize(outcome, task, *calibrated)
    except Exception:
        if created and world.is_main and store.finished == 0:  # nothing to keep: leave no folder a retry trips on
            import shutil

            store.close()
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        store.close()


def _calibrate(config: RunConfig, task_cls, backend, console, folder: Path) -> tuple:
    """With --calibrate-on and a sweep: run the grid on the calibration samples first (a folder
    beside the run's) and choose there; (choice, folder), or (None, None) to choose on the run itself."""
    from evalkit.run.calibration import calibration_config, choose, groups

    labels = [a.get("label") or a["name"] for a in config.attention]
    if not config.calibrate_on or not groups(labels):
        return None, None
    calibration = calibration_config(config, task_cls, folder)
    outcome = execute(calibration, console=console, backend=backend)
    if outcome.interrupted:
        raise KeyboardInterrupt  # the choice needs every calibration sample; a resume continues it
    if outcome.frame is None:  # a data-parallel worker: rank 0 chooses and reports
        return None, None
    task = task_cls(build_options(task_cls, calibration.task_options), TaskContext(None, None, True, calibration.seed))
    return choose(outcome.frame, task, config.calibrate_on), outcome.folder


def _open_store(world, folder: Path, identity: dict, resume: bool):
    """Create and lock the run folder (rank 0), then let the other ranks join it."""
    from evalkit.store.results import RunStore

    store = RunStore(folder, identity, resume) if world.is_main else None
    world.barrier()
    return store or RunStore(folder, identity, resume, rank=world.rank)


def _run(config, store, backend, variants, task, samples, manifest, console, world, timings) -> RunOutcome:
    from evalkit.core.task import runs_under
    from evalkit.run.progress import ProgressReporter, quiet_library_warnings
    from evalkit.run.runner import Runner
    from evalkit.store.manifest import dataset_hash, device_description

    batch_tokens = config.batch_tokens or backend.batch_tokens()
    progress = ProgressReporter(console, quiet=config.quiet)
    manifest.update(
        {
            "run_id": store.run_id,
            "model": backend.describe(),
            "backend": backend.name,
            "hashes": {**backend.hashes, "dataset": dataset_hash(task.options)},
            "attention": [v.describe for v in variants],
            "device": device_description(backend.device),
            "batch_tokens": batch_tokens,
            "samples": len(samples),
            "planned_answers": sum(runs_under(s, k) for k in range(len(variants)) for s in samples),
        }
    )
    manifest.update(task.provenance())  # e.g. how perplexity's token stream was built, and its fingerprint
    if world.is_main:
        store.write_manifest(manifest)

    interrupted = False
    run_started = time.perf_counter()
    runner = Runner(backend, store, batch_tokens, progress, share_prefixes=config.prefix_cache)
    try:
        with quiet_library_warnings(console):  # printed once after the run, not through the progress bar
            runner.run(task, world.shard(samples), variants)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.stop()
        store.close_journal()

    name = backend.describe()["name"]
    common = {"run_id": store.run_id, "task": task.name, "model": name}
    title = f"{name}, {', '.join(v.label for v in variants)}"
    timings = {
        **timings,
        "run_seconds": round(time.perf_counter() - run_started, 2),
        "tokens_per_second": round(progress.tokens_per_second, 1),
    }
    manifest["prefix_cache"] = runner.prefix_decision  # walked or batched, and the measured costs behind it
    world.barrier()  # every rank's journal is complete before rank 0 merges them
    if not world.is_main:
        return RunOutcome(store.folder, None, None, [], interrupted, progress.tokens_per_second)
    if world.size > 1:
        store.read_journals()
        manifest["world_size"] = world.size
    return _finish(
        store, task, manifest, common, title, interrupted, progress.tokens_per_second, timings, draw=config.plots
    )


def check_config(config: RunConfig) -> None:
    """Every check of a run config that needs no model and writes nothing: a sweep or several
    models check all their runs this way before the first one loads anything."""
    from evalkit.run.attention_flags import VariantRequest, refuse_unused_flags
    from evalkit.store.results import check_out_folder

    settings.check_settings({s.name: getattr(config, s.name) for s in settings.config_fields()})
    task_cls = get_task(config.task)
    options = build_options(task_cls, config.task_options)
    requests = [VariantRequest.from_dict(request) for request in config.attention]
    if config.calibrate_on:
        from evalkit.run.calibration import calibration_config

        calibration_config(config, task_cls, Path(config.out or "run"))  # a bad spec fails before any load
    check_inputs(task_cls, options, config)
    refuse_unsupported(config, task_cls, options)
    if config.out:
        check_out_folder(Path(config.out), config.identity(), config.resume)
    refuse_unused_flags(requests)  # the first check that imports torch (the variant registry lives with it)


def check_checkpoint(config: RunConfig) -> None:
    """Before any weights load: ``--model`` names a checkpoint, and what the run asks of it (layers,
    context lengths) fits its config.json. Reads local folders and the embedded model once fetched;
    a GGUF file or a hub id is checked after loading, as before."""
    from evalkit.core.grid import layer_indices, parse_lengths

    task_cls = get_task(config.task)
    options = build_options(task_cls, config.task_options)
    if task_cls.model_free(options):
        return  # computed without a model: --model is not read
    values = _checkpoint_config(config.model)
    if values is None:
        return
    text = values.get("text_config") if isinstance(values.get("text_config"), dict) else {}
    layers = values.get("num_hidden_layers") or text.get("num_hidden_layers")
    asked = [("--layers", getattr(options, "layers", "all"))] + [
        ("--attention-layers", request["layers"]) for request in config.attention if request.get("layers")
    ]
    for flag, spec in asked if isinstance(layers, int) else []:
        wrong = [i for i in layer_indices(spec) if i >= layers]
        if wrong:
            raise ConfigError(
                f"{flag} {spec}: {config.model} has {layers} layers (0..{layers - 1}), no layer {wrong[0]}",
                f"give layer indices below {layers}",
            )
    positions = values.get("max_position_embeddings") or text.get("max_position_embeddings")
    # prompts from a samples file have their own lengths, checked once they are tokenized
    lengths = None if getattr(options, "samples_file", None) else getattr(options, "lengths", None)
    stretched = any(v is not None for v in config.rope.values())  # RoPE overrides change what the limit means
    if lengths and isinstance(positions, int) and not (config.allow_extrapolation or stretched):
        longest = max(parse_lengths(str(lengths)))
        if longest > positions:
            raise ConfigError(
                f"context length {longest} exceeds the model's max_position_embeddings ({positions})",
                "use shorter --lengths, or pass --allow-extrapolation to test length generalization",
            )


def _checkpoint_config(spec: str) -> dict | None:
    """A model spec's config.json as a dict, where it can be read without loading (else None); a spec
    that names nothing raises the loader's one-line error now."""
    import json

    from evalkit.models import fetch
    from evalkit.models.loading import resolve

    if spec in fetch.EMBEDDED:
        folder = fetch.cached_folder(spec) if fetch.is_cached(spec) else None
    else:
        source = resolve(spec)
        folder = Path(source.location) if source.kind == "hf" else None
    try:
        return json.loads((folder / "config.json").read_text()) if folder else None
    except (OSError, ValueError):
        return None  # the loader says what is wrong with it


def check_task_options(task: str, task_options: dict[str, Any], seed: int = 1234, extrapolation: bool = False):
    """A task's options and the files they name, checked before the attention flags (whose variant
    registry imports torch): a mistyped grid is refused in well under a second."""
    task_cls = get_task(task)
    options = build_options(task_cls, task_options)
    check_inputs(task_cls, options, RunConfig(task, "", task_options, seed=seed, allow_extrapolation=extrapolation))
    return options


def check_inputs(task_cls, options, config: RunConfig) -> None:
    """Everything about the task's options that can be checked without the model: the grid (the
    task's constructor parses it) and the files it will read."""
    from evalkit.data.corpus import load_corpus

    task_cls(options, TaskContext(None, None, config.allow_extrapolation, config.seed))
    samples_file = getattr(options, "samples_file", None)
    if samples_file:
        path = Path(samples_file)
        if not path.is_file():
            raise DataError(f"samples file {samples_file} does not exist", "check the path given to --samples-file")
        if not path.read_text(encoding="utf-8", errors="replace").strip():
            raise DataError(f"samples file {samples_file} is empty", "write one JSON object per line")
    dataset = getattr(options, "dataset", None)
    if dataset and Path(dataset).expanduser().exists():  # local text: read it now (dataset names load with the task)
        load_corpus(dataset, options.text_field, options.split)


def _finish(
    store, task, manifest, common, title, interrupted, tokens_per_second, timings, draw: bool = True
) -> RunOutcome:
    """Tables, plots and the final manifest, from whatever the journals hold."""
    frame = task.derive(store.frame(common, task.key_columns))
    summary = task.summarize(frame) if len(frame) else None
    store.write_tables(frame, summary)
    plots = task.plot(frame, title, store.folder / "plots") if draw and len(frame) and not interrupted else []
    manifest.update(
        {
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "interrupted": interrupted,
            "timings": timings,
            "rows": len(frame),
            "finished_samples": store.finished,
            "metrics": metric_records(task.metrics),  # what each metric means: compare, gate and figures read it
        }
    )
    store.write_manifest(manifest)
    return RunOutcome(store.folder, frame, summary, plots, interrupted, tokens_per_second)


def _check_lengths(samples, max_positions: int | None, allow_extrapolation: bool) -> None:
    """Refuse positions beyond the model's limit, counting what the model runs on: a prompt of exactly the
    limit passes with a one-token answer; each further answer token needs one more position."""
    if not samples or max_positions is None:
        return
    widest = max((s.request for s in samples), key=lambda r: r.positions)
    if widest.positions > max_positions and not allow_extrapolation:
        prompt = getattr(widest, "prompt", None)
        tokens = widest.length if prompt is None else len(prompt)
        extra = widest.positions - tokens
        if extra <= 0 or tokens > max_positions:
            raise ConfigError(
                f"context length {tokens} exceeds the model's max_position_embeddings ({max_positions})",
                "use shorter --lengths, or pass --allow-extrapolation to test length generalization",
            )
        raise ConfigError(
            f"a {tokens}-token prompt needs {widest.positions} positions with its answer (+{extra}), beyond the "
            f"model's max_position_embeddings ({max_positions}): that is extrapolation",
            f"use prompts of at most {max_positions - extra} tokens, or pass --allow-extrapolation",
        )


def run_auxiliary(aux, config, backend, folder: Path, console, log):
    """A run a task declares it needs first (``Task.auxiliary_runs``): the same task on ``aux.model`` with
    ``aux.task_options`` changed, beside the run's folder (``<run>-<name>``; resumed with it), keeping the
    rows of ``aux.metrics``. Where it must read the same tokens, another tokenizer is refused first."""
    from evalkit.data.corpus import tokenizer_fingerprint

    other = load_for(dataclasses.replace(config, model=aux.model), log)
    if aux.same_tokenizer and tokenizer_fingerprint(other.tokenizer) != tokenizer_fingerprint(backend.tokenizer):
        raise ConfigError(
            f"{aux.model} has another tokenizer than {config.model} ({aux.same_tokenizer})",
            f"give a {aux.name} that shares the model's tokenizer",
        )
    sub = dataclasses.replace(  # the run's settings, on the auxiliary checkpoint as shipped
        config,
        model=aux.model,
        task_options={**config.task_options, **aux.task_options},
        attention=RunConfig.attention,
        rope={},
        out=str(folder.with_name(f"{folder.name}-{aux.name}")),
        calibrate_on=None,
        plots=False,
    )
    outcome = execute(sub, console=console, backend=other)
    if outcome.interrupted:
        raise KeyboardInterrupt  # the task needs every auxiliary sample; a resume continues it
    frame = outcome.frame
    return frame[frame.metric.isin(aux.metrics)]
