"""``builtin:python-stdlib``: the running interpreter's standard library source, as long documents.

Long-context perplexity needs documents longer than the context: a window joined from unrelated
short documents cannot show whether a model uses text thousands of tokens back. Every Python
ships its standard library as source, and code has real long-range dependencies (a name defined
thousands of lines before its use). On SmolLM2's tokenizer (CPython 3.11), 32 non-test modules
exceed 16k tokens and 5 exceed 32k.

The reading order does not depend on the file system: every ``*.py`` file under
``sysconfig.get_paths()["stdlib"]``, sorted by its POSIX path relative to that folder, one file one
document, read as UTF-8. Left out: tests (a path part named ``test``, ``tests`` or ``idle_test``, or
a file named ``test_*.py``), installed packages (``site-packages``, ``dist-packages``) and
``pydoc_data/topics.py`` (a data table: the text of ``builtin:pydoc-topics``). The standard library
differs between Python versions, so the corpus records the version and a hash of its file list.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from pathlib import Path

_TEST_PARTS = {"test", "tests", "idle_test"}
_SKIP_TOP = {"site-packages", "dist-packages"}
_SKIP_FILES = {"pydoc_data/topics.py"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[str]:
    """The corpus's files, relative POSIX paths in reading order."""
    root = root or stdlib_root()
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        parts = rel.parts
        if parts[0] in _SKIP_TOP or rel.as_posix() in _SKIP_FILES:
            continue
        if any(p in _TEST_PARTS for p in parts[:-1]) or parts[-1].startswith("test_") or parts[-1] in ("test.py",):
            continue
        if path.is_file():
            out.append(rel.as_posix())
    return sorted(out)


def file_list_hash(files: list[str]) -> str:
    """sha256 of the relative paths joined by newlines."""
    return hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]


def python_version() -> str:
    return f"{sys.implementation.name} {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"


def read(root: Path | None = None) -> tuple[tuple[str, ...], str, dict]:
    """(documents, recipe, details): one document per file, in sorted relative-path order, how they
    were read, and what identifies them (``corpus.load_corpus`` makes the Corpus of them)."""
    from evalkit.core.errors import DataError

    root = root or stdlib_root()
    files = stdlib_files(root)
    if not files:
        raise DataError(
            f"no standard library source under {root}", "use an interpreter that ships its .py files, or --dataset"
        )
    docs = tuple((root / f).read_text(encoding="utf-8", errors="replace") for f in files)
    version, listing = python_version(), file_list_hash(files)
    recipe = (
        f"{version} standard library ({root}): every *.py file sorted by relative POSIX path, one file per "
        "document read as UTF-8, text kept as is; left out: path parts test/tests/idle_test, files test_*.py, "
        f"site-packages, pydoc_data/topics.py; {len(files)} files, file list sha256[:16] {listing}"
    )
    details = {"python": version, "files": len(files), "file_list_sha256": listing}
    return docs, recipe, details
