"""``evalkit export``: a run's exact inputs, rebuilt from its manifest, for use outside evalkit.

Samples are deterministic from the task, its options, the seed and the tokenizer, all of which
the manifest records, so the prompts are rebuilt rather than stored with every run. Needle and
focus prompts are written in the ``--samples-file`` format with their token ids (``prompt_ids``,
``answer_ids``), which that reader uses verbatim: the file fed back with ``--samples-file``
scores the same tokens. Other tasks write each sample's tokens (perplexity: every window).
"""

from __future__ import annotations

import json
from pathlib import Path

from evalkit.core.errors import ConfigError, ResultsError
from evalkit.store.records import token_records


def read_manifest(run: str | Path) -> dict:
    from evalkit.store.results import MANIFEST
    from evalkit.store.results import read_manifest as read

    if not (Path(run) / MANIFEST).is_file():
        raise ResultsError(
            f"{run} is not an evalkit run folder (no manifest.json)", "give a folder written by evalkit run"
        )
    return read(run, fix="export from another run folder")


def model_spec(manifest: dict) -> str:
    """The ``--model`` that loads the run's tokenizer: where the manifest says the model was."""
    model = manifest.get("model") or {}
    if model.get("gguf_file"):
        return str(Path(model["location"]) / model["gguf_file"])
    return model.get("location") or manifest["config"]["model"]


def rebuild_task(manifest: dict, log=print):
    """The run's task with the run's options, seed and tokenizer."""
    from evalkit.core.registry import get_task
    from evalkit.core.task import TaskContext
    from evalkit.models.loading import load_tokenizer_only, part_hashes, resolve
    from evalkit.run.evaluate import build_options

    config = manifest["config"]
    task_cls = get_task(config["task"])
    options = build_options(task_cls, config.get("task_options", {}))
    if task_cls.model_free(options):
        raise ConfigError(
            f"run {manifest.get('run_id')} is model-free (analytic): it has no prompts", "export a run on a model"
        )
    spec = model_spec(manifest)
    recorded = (manifest.get("hashes") or {}).get("tokenizer")
    if recorded and part_hashes(resolve(spec, log=log))["tokenizer"] != recorded:
        raise ResultsError(
            f"the tokenizer files of {spec} changed since the run", "export with the tokenizer the run used"
        )
    tokenizer = load_tokenizer_only(spec, log=log)
    model = manifest.get("model") or {}
    context = TaskContext(
        tokenizer,
        model.get("max_position_embeddings"),
        bool(config.get("allow_extrapolation")),
        int(manifest.get("seed", config.get("seed", 1234))),
        model.get("training_length"),
    )
    return task_cls(options, context)


def export_prompts(run: str | Path, out: str | Path, log=print) -> int:
    """Write the run's prompts to ``out`` (JSONL); returns the number of records."""
    from evalkit.store.results import atomic_write_text

    task = rebuild_task(read_manifest(run), log=log)
    records = task.export_records()
    if records is None:  # the task's default: each sample's token sequence
        records = token_records(task)
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--prompts {out} is a folder", "give a file name, e.g. prompts.jsonl")
    if not out.parent.exists():
        raise ConfigError(f"folder {out.parent} does not exist", "create it, or write --prompts elsewhere")
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in records))
    return len(records)
