"""Facts about the environment a run records: versions, device, git revision."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("evalkit", "torch", "transformers", "numpy", "pandas", "safetensors", "gguf", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def device_description(device) -> str:
    """The device class a manifest records (what compare's pairing checks): a torch.device or its name."""
    import torch

    device = torch.device(device) if isinstance(device, str) else device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def git_state() -> tuple[str | None, bool | None]:
    """(revision, dirty) of the evalkit checkout; (None, None) when evalkit runs from no git checkout.

    Dirty means tracked files differ from the revision: the code that ran is not the commit.
    """
    here = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    if done.returncode != 0:
        return None, None
    return done.stdout.strip(), bool(dirty.stdout.strip())


def git_revision() -> str | None:
    """The evalkit checkout's revision, "+dirty" appended when tracked files differ from it."""
    revision, dirty = git_state()
    return None if revision is None else revision + ("+dirty" if dirty else "")


def git_dirty() -> bool | None:
    return git_state()[1]


def dataset_hash(options) -> str | None:
    """sha256 of the files a task's --samples-file or --dataset reads (the built-in corpus: its text's hash).

    A dataset by hub name is recorded by name: its files are the datasets library's to fingerprint.
    """
    from evalkit.models.loading import files_hash

    samples_file, dataset = getattr(options, "samples_file", None), getattr(options, "dataset", None)
    if samples_file and Path(samples_file).is_file():
        return files_hash([Path(samples_file)])
    if not hasattr(options, "dataset"):
        return None
    if hasattr(options, "resolved_dataset"):  # a task whose default corpus depends on its other options
        dataset = options.resolved_dataset()
    if dataset is None or dataset.startswith("builtin"):
        from evalkit.data.corpus import PYTHON_STDLIB, load_corpus

        return ("builtin:python-stdlib:" if dataset == PYTHON_STDLIB else "builtin:") + load_corpus(dataset).fingerprint
    path = Path(dataset).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl", ".parquet"))
        return files_hash(files) if files else None
    return files_hash([path]) if path.is_file() else f"dataset:{dataset}"
