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
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from evalkit.core.errors import ResultsError

COMMON_COLUMNS = ["run_id", "task", "model", "attention", "context_length"]
JOURNAL = "journal.jsonl"
MANIFEST = "manifest.json"


@contextmanager
def _disk_errors(path: Path):
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ResultsError(
                f"disk full while writing {path}", "free some space, then rerun with --resume: finished rows are kept"
            ) from None
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


LOCK = ".evalkit.lock"
# What a start that failed before its manifest may leave (older releases made plots/ first): a retry accepts it.
_LEFTOVERS = {LOCK, "plots"}


class RunLock:
    """One process per run folder: an exclusive ``flock`` on ``.evalkit.lock``, holding ``pid@host``.

    The kernel drops the lock when its process dies, however it dies, so a crash never leaves a
    stale lock behind: the file stays, but the next run takes the lock at once.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self._handle = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): run unlocked rather than not at all
            return
        with _disk_errors(self.path):
            handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ResultsError(
                f"--out {self.path.parent} is in use by a running evalkit process ({holder})",
                "wait for it to finish, or choose another --out",
            ) from None
        import socket

        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock now (a check that takes and drops it)."""
        if not self.path.exists() or self._handle is not None:
            return False
        try:
            self.acquire()
        except ResultsError:
            return True
        self.release()
        return False

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the flock
            self._handle = None


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """'name: old -> new' for every identity entry that differs. Attention variants may be added on
    resume (their samples all run), but a variant already in the folder must keep its settings."""
    out = []
    for key in sorted(set(stored) | set(wanted)):
        old, new = stored.get(key), wanted.get(key)
        if key == "attention" and isinstance(old, dict) and isinstance(new, dict):
            out += [
                f"attention {k}: {old[k]} -> {new.get(k, 'not given')}" for k in sorted(old) if old[k] != new.get(k)
            ]
        elif old != new and not (isinstance(old, int) and str(old) == new):  # --trials was an int before auto:D
            out.append(f"{key}: {old!r} -> {new!r}")
    return out


def check_out_folder(folder: Path, identity: dict[str, Any], resume: bool, check_lock: bool = True) -> None:
    """Whether a run may start in ``folder``, checked before anything is loaded or written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ResultsError(f"--out {folder} is a file", "give a folder path (new or holding an evalkit run)")
    existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ResultsError(f"--out {folder}: {existing} is a file", "give a folder path whose parents are folders")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ResultsError(
            f"cannot write --out {folder} ({existing} is not writable)", "choose a writable folder with --out"
        )
    if not folder.exists():
        return
    if check_lock and RunLock(folder).held_elsewhere():
        RunLock(folder).acquire()  # raises the one-line "in use" error naming the holder
    entries = [p for p in folder.iterdir() if not (p.name in _LEFTOVERS and (p.is_file() or not any(p.iterdir())))]
    manifest_path = folder / MANIFEST
    if not entries:
        return
    if not manifest_path.exists():
        raise ResultsError(
            f"--out {folder} is not empty and is not an evalkit run folder", "choose an empty or new folder"
        )
    if not resume:
        raise ResultsError(
            f"--out {folder} already holds a run", "pass --resume to continue it, or choose another --out"
        )
    differing = _differences(read_manifest(folder).get("identity", {}), identity)
    if differing:
        raise ResultsError(
            f"--out {folder} holds a different run (options differ: {'; '.join(differing)})",
            "resume with the options it was started with (see its manifest.json), or choose another --out",
        )


class RunStore:
    """The open run folder: created, locked, and its journal read, once the run is ready to start."""

    def __init__(self, folder: Path, identity: dict[str, Any], resume: bool, rank: int = 0):
        self.folder = Path(folder)
        self.run_id = self.folder.name
        self.identity = identity
        self.journal_path = self.folder / (JOURNAL if rank == 0 else f"journal.rank{rank}.jsonl")
        self._lock = RunLock(self.folder)
        if rank == 0:  # other ranks join the folder rank 0 has checked and locked
            check_out_folder(self.folder, identity, resume)
        with _disk_errors(self.folder):
            (self.folder / "plots").mkdir(parents=True, exist_ok=True)
        if rank == 0:
            self._lock.acquire()
            check_out_folder(
                self.folder, identity, resume, check_lock=False
            )  # again under the lock: another process may have started
        self._done: set[tuple[str, str]] = set()
        self._entries: list[dict] = []
        self._journal = None
        if resume or rank != 0:
            self.read_journals()

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

    def close_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def close(self) -> None:
        """Close the journal and release the folder's lock."""
        self.close_journal()
        self._lock.release()

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

    def write_tables(self, frame, summary) -> None:
        atomic_write(self.folder / "results.parquet", lambda tmp: frame.to_parquet(tmp, index=False))
        atomic_write(self.folder / "results.csv", lambda tmp: frame.to_csv(tmp, index=False))
        if summary is not None:
            atomic_write(self.folder / "summary.csv", lambda tmp: summary.to_csv(tmp, index=False))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest = {**manifest, "identity": self.identity}
        atomic_write_text(self.folder / MANIFEST, json.dumps(manifest, indent=2, default=str) + "\n")


def read_manifest(folder: str | Path, fix: str = "choose another --out") -> dict[str, Any]:
    """The folder's manifest, or {} where there is none yet; ``fix`` is the hint if it is corrupt."""
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError:
        raise ResultsError(f"{path} is corrupt", fix) from None


def load_rows(folder: str | Path):
    """A run's rows back as a DataFrame, in one line: ``load_rows("results/my-run")``."""
    import pandas as pd

    return pd.read_parquet(Path(folder) / "results.parquet")
