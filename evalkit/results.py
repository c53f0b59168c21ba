"""The run folder: tidy rows, summary, manifest and plots, written so that nothing is lost.

Layout of ``results/<run-id>/``:
- ``journal.jsonl``: one line per finished sample (attention variant, sample id, its rows),
  appended and fsynced as work finishes. It is the record a crash or Ctrl-C leaves behind and
  what ``--resume`` reads; every table below is derived from it.
- ``results.parquet`` / ``results.csv``: long tidy rows (run_id, task, model, attention,
  context_length, task keys, metric, value, then provenance such as source and offset).
- ``summary.csv``: headline numbers per context length and attention variant.
- ``manifest.json``: command, config, model and hash, versions, device, seed, timings, git rev.
- ``plots/*.png``.
All tables are written to a temporary file first and renamed into place.
"""

from __future__ import annotations

import errno
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

from evalkit.errors import ResultsError

COMMON_COLUMNS = ["run_id", "task", "model", "attention", "context_length"]
JOURNAL = "journal.jsonl"
MANIFEST = "manifest.json"


@contextmanager
def _disk_errors(path: Path):
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ResultsError(f"disk full while writing {path}", "free some space, then rerun with --resume: finished rows are kept") from None
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise ResultsError(f"cannot write {path} ({exc.strerror})", "choose a writable folder with --out") from None
        raise


def atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then rename over ``path``: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with _disk_errors(path):
        write(tmp)
        os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


class RunStore:
    def __init__(self, folder: Path, identity: dict[str, Any], resume: bool, rank: int = 0):
        self.folder = Path(folder)
        self.run_id = self.folder.name
        self.identity = identity
        self.journal_path = self.folder / (JOURNAL if rank == 0 else f"journal.rank{rank}.jsonl")
        if rank == 0:  # other ranks join the folder rank 0 has checked
            self._check_folder(resume)
        with _disk_errors(self.folder):
            (self.folder / "plots").mkdir(parents=True, exist_ok=True)
        self._done: set[tuple[str, str]] = set()
        self._entries: list[dict] = []
        self._journal = None
        if resume or rank != 0:
            self.read_journals()

    def _check_folder(self, resume: bool) -> None:
        manifest_path = self.folder / MANIFEST
        if not self.folder.exists() or not any(self.folder.iterdir()):
            return
        if not manifest_path.exists():
            raise ResultsError(f"--out {self.folder} is not empty and is not an evalkit run folder", "choose an empty or new folder")
        if not resume:
            raise ResultsError(f"--out {self.folder} already holds a run", "pass --resume to continue it, or choose another --out")
        try:
            stored = json.loads(manifest_path.read_text()).get("identity", {})
        except json.JSONDecodeError:
            raise ResultsError(f"{manifest_path} is corrupt", "choose another --out") from None
        differing = sorted(k for k in set(stored) | set(self.identity) if stored.get(k) != self.identity.get(k))
        if differing:
            raise ResultsError(f"--out {self.folder} holds a different run (differs in: {', '.join(differing)})",
                               "resume with the same task, model and options, or choose another --out")

    def read_journals(self) -> None:
        """Every journal in the folder (one per data-parallel rank that ever ran)."""
        self._entries, self._done = [], set()
        for path in sorted(self.folder.glob("journal*.jsonl")):
            kept = []
            with path.open() as handle:
                for line in handle:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        break  # a line cut off by a crash: that sample runs again
                    kept.append(entry)
            if path == self.journal_path and self._journal is None:
                # Rewrite without a torn tail so later appends start on a clean line.
                atomic_write_text(path, "".join(json.dumps(e) + "\n" for e in kept))
            for entry in kept:
                if (entry["attention"], entry["sample_id"]) not in self._done:
                    self._entries.append(entry)
                    self._done.add((entry["attention"], entry["sample_id"]))

    def is_done(self, attention: str, sample_id: str) -> bool:
        return (attention, sample_id) in self._done

    @property
    def finished(self) -> int:
        return len(self._entries)

    def append(self, attention: str, sample_id: str, rows: list[dict]) -> None:
        entry = {"attention": attention, "sample_id": sample_id, "rows": rows}
        path = self.journal_path
        with _disk_errors(path):
            if self._journal is None:
                self._journal = path.open("a")
            self._journal.write(json.dumps(entry) + "\n")
            self._journal.flush()
            os.fsync(self._journal.fileno())
        self._entries.append(entry)
        self._done.add((attention, sample_id))

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def frame(self, common: dict[str, Any], key_columns: Iterable[str]):
        """All rows so far as a DataFrame with the documented column order."""
        import pandas as pd

        records = [{**common, "attention": e["attention"], **row} for e in self._entries for row in e["rows"]]
        leading = COMMON_COLUMNS + list(key_columns) + ["metric", "value"]
        frame = pd.DataFrame.from_records(records)
        for column in leading:
            if column not in frame.columns:
                frame[column] = pd.Series(dtype="float64" if column == "value" else "object")
        for column in frame.columns:
            values = frame[column]
            if values.dtype.kind == "f" and column != "value" and values.dropna().mod(1).eq(0).all():
                frame[column] = values.astype("Int64")  # integer keys stay integers despite missing cells
        rest = [c for c in frame.columns if c not in leading]
        return frame[leading + rest]

    def stored_model_hash(self) -> str | None:
        path = self.folder / MANIFEST
        if not path.exists():
            return None
        return json.loads(path.read_text()).get("model", {}).get("content_hash")

    def write_tables(self, frame, summary) -> None:
        atomic_write(self.folder / "results.parquet", lambda tmp: frame.to_parquet(tmp, index=False))
        atomic_write(self.folder / "results.csv", lambda tmp: frame.to_csv(tmp, index=False))
        if summary is not None:
            atomic_write(self.folder / "summary.csv", lambda tmp: summary.to_csv(tmp, index=False))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest = {**manifest, "identity": self.identity}
        atomic_write_text(self.folder / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")


def load_rows(folder: str | Path):
    """A run's rows back as a DataFrame, in one line: ``load_rows("results/my-run")``."""
    import pandas as pd

    return pd.read_parquet(Path(folder) / "results.parquet")
