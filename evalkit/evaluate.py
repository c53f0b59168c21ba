"""One evaluation run, end to end: load, build samples, run, write tables, manifest and plots.

The CLI is a thin layer over ``evaluate(RunConfig)``; tests and notebooks call it directly.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evalkit.errors import ConfigError
from evalkit.registry import get_task


@dataclass(frozen=True)
class RunConfig:
    task: str
    model: str
    task_options: dict[str, Any] = field(default_factory=dict)
    attention: tuple[dict[str, Any], ...] = ({"name": "auto"},)  # VariantRequest dicts: name, label, s, b, ...
    rope: dict[str, Any] = field(default_factory=dict)  # theta / scaling / factor overrides
    device_map: str | None = None
    out: str | None = None
    resume: bool = False
    device: str = "auto"
    dtype: str = "auto"
    batch_tokens: int | None = None
    prefix_cache: bool = True  # score needle prompts that share a prefix on one KV cache
    seed: int = 1234
    allow_extrapolation: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    quiet: bool = False

    def identity(self) -> dict[str, Any]:
        """What must match for ``--resume`` to continue a run: everything but grid extents and speed knobs."""
        task_cls = get_task(self.task)
        grid = {f.name for f in dataclasses.fields(task_cls.Options) if f.metadata.get("grid")}
        return {"task": self.task, "model": self.model, "dtype": self.dtype, "seed": self.seed,
                # the variants' settings, not their list: adding a variant on --resume is allowed
                "attention": sorted({json.dumps({k: v for k, v in a.items() if k not in ("name", "label")}, sort_keys=True)
                                     for a in self.attention}), "rope": {k: v for k, v in self.rope.items() if v is not None},
                "task_options": {k: v for k, v in sorted(self.task_options.items()) if k not in grid}}


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
        raise ConfigError(f"unknown option(s) for task {task_cls.name}: {', '.join(unknown)}", f"valid: {', '.join(sorted(names))}")
    for f in dataclasses.fields(task_cls.Options):
        choices = f.metadata.get("choices")
        if choices and f.name in values and values[f.name] not in choices:
            raise ConfigError(f"bad --{f.name.replace('_', '-')} {values[f.name]!r}", f"use one of: {', '.join(choices)}")
    return task_cls.Options(**values)


def model_slug(model: str) -> str:
    """A folder-safe short name for a model spec: ckpt/ref/ssmax/ -> ssmax."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model.rstrip("/")).name or model).strip("-")[:40]


def default_out(task: str, model: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{task}-{model_slug(model)}-{stamp}"


def load_for(config: RunConfig, log=print):
    """The model a run config asks for, loaded once (a sweep reuses it across tasks)."""
    from evalkit.models.loading import LoadOptions, load_model

    return load_model(config.model, LoadOptions(config.device, config.dtype, config.allow_pickle, config.trust_remote_code,
                                                rope=config.rope, device_map=config.device_map), log=log)


def evaluate(config: RunConfig, console=None, loaded=None) -> RunOutcome:
    from rich.console import Console

    from evalkit.manifest import device_description, git_revision, library_versions
    from evalkit.models.adapter import ModelAdapter
    from evalkit.distributed import current_world
    from evalkit.progress import ProgressReporter
    from evalkit.results import RunStore
    from evalkit.runner import Runner, default_batch_tokens
    from evalkit.task import TaskContext
    from evalkit.variants import VariantRequest, resolve_variants

    console = console or Console(stderr=True)
    log = (lambda *a: None) if config.quiet else console.print
    started_at = datetime.now(timezone.utc)
    task_cls = get_task(config.task)
    options = build_options(task_cls, config.task_options)
    if config.batch_tokens is not None and config.batch_tokens < 1:
        raise ConfigError(f"bad --batch-tokens {config.batch_tokens}", "give a positive number of tokens")

    model_free = getattr(task_cls, "model_free", None)
    model_free = bool(model_free and model_free(options))
    world = current_world()
    if world.size > 1:  # one GPU per process; rank 0 alone reports progress
        config = dataclasses.replace(config, device=world.device(config.device), quiet=config.quiet or not world.is_main)
    folder = world.broadcast(Path(config.out) if config.out else default_out(config.task, "analytic" if model_free else config.model))
    identity = config.identity()
    store = RunStore(folder, identity, config.resume) if world.is_main else None  # checks --out first
    world.barrier()
    store = store or RunStore(folder, identity, config.resume, rank=world.rank)
    manifest = {"run_id": store.run_id, "command": sys.argv, "config": dataclasses.asdict(config),
                "task_options": dataclasses.asdict(options), "versions": library_versions(), "seed": config.seed,
                "git_revision": git_revision(), "started_at": started_at.isoformat()}
    if model_free:
        task = task_cls(options, TaskContext(None, None, config.allow_extrapolation, config.seed))
        for label, sample_id, rows in task.model_free_rows(next(iter(config.attention), {})):
            if not store.is_done(label, sample_id):
                store.append(label, sample_id, rows)
        store.close()
        return _finish(store, task, manifest, {"run_id": store.run_id, "task": task.name, "model": "none (analytic)"},
                       "analytic", interrupted=False, tokens_per_second=0.0, timings={})

    load_started = time.perf_counter()
    loaded = loaded or load_for(config, log)
    load_seconds = time.perf_counter() - load_started
    stored_hash = store.stored_model_hash()
    if config.resume and stored_hash and stored_hash != loaded.content_hash:
        raise ConfigError(f"the weights of {config.model} changed since the run in {folder} started ({stored_hash} -> {loaded.content_hash})",
                          "resume with the same checkpoint, or choose another --out")
    variants = resolve_variants(loaded, [VariantRequest.from_dict(a) for a in config.attention])

    task = task_cls(options, TaskContext(loaded.tokenizer, loaded.max_positions, config.allow_extrapolation, config.seed,
                                         loaded.training_length))
    samples = task.samples()
    mine = world.shard(samples)
    _check_lengths(samples, loaded.max_positions, config.allow_extrapolation)

    adapter = ModelAdapter(loaded)
    batch_tokens = config.batch_tokens or default_batch_tokens(loaded)
    progress = ProgressReporter(console, quiet=config.quiet)
    manifest.update({"model": loaded.describe(), "attention": [v.describe for v in variants],
                     "device": device_description(loaded.device), "batch_tokens": batch_tokens, "samples": len(samples)})
    manifest.update(task.provenance())  # e.g. how perplexity's token stream was built, and its fingerprint
    if world.is_main:
        store.write_manifest(manifest)

    interrupted = False
    run_started = time.perf_counter()
    runner = Runner(adapter, store, batch_tokens, progress, share_prefixes=config.prefix_cache)
    try:
        runner.run(task, mine, variants)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.stop()
        store.close()

    common = {"run_id": store.run_id, "task": task.name, "model": loaded.source.name}
    title = f"{loaded.source.name}, {', '.join(v.label for v in variants)}"
    timings = {"load_seconds": round(load_seconds, 2), "run_seconds": round(time.perf_counter() - run_started, 2),
               "tokens_per_second": round(progress.tokens_per_second, 1)}
    manifest["prefix_cache"] = runner.prefix_decision  # walked or batched, and the measured costs behind it
    world.barrier()  # every rank's journal is complete before rank 0 merges them
    if not world.is_main:
        return RunOutcome(folder, None, None, [], interrupted, progress.tokens_per_second)
    if world.size > 1:
        store.read_journals()
        manifest["world_size"] = world.size
    return _finish(store, task, manifest, common, title, interrupted, progress.tokens_per_second, timings)


def _finish(store, task, manifest, common, title, interrupted, tokens_per_second, timings) -> RunOutcome:
    """Tables, plots and the final manifest, from whatever the journals hold."""
    frame = store.frame(common, task.key_columns)
    summary = task.summarize(frame) if len(frame) else None
    store.write_tables(frame, summary)
    plots = task.plot(frame, title, store.folder / "plots") if len(frame) and not interrupted else []
    manifest.update({"finished_at": datetime.now(timezone.utc).isoformat(), "interrupted": interrupted,
                     "timings": timings, "rows": len(frame), "finished_samples": store.finished})
    store.write_manifest(manifest)
    return RunOutcome(store.folder, frame, summary, plots, interrupted, tokens_per_second)


def _check_lengths(samples, max_positions: int | None, allow_extrapolation: bool) -> None:
    if not samples or max_positions is None:
        return
    longest = max(s.request.length for s in samples)
    if longest > max_positions and not allow_extrapolation:
        raise ConfigError(f"context length {longest} exceeds the model's max_position_embeddings ({max_positions})",
                          "use shorter --lengths, or pass --allow-extrapolation to test length generalization")
