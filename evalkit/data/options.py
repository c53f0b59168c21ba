"""Options every corpus-reading task shares, so ``--dataset`` means one thing everywhere."""

from __future__ import annotations

from dataclasses import dataclass

from evalkit.task import option


@dataclass(frozen=True)
class CorpusOptions:
    dataset: str | None = option(None, "Text source: a .txt/.jsonl/.parquet file or folder, or a Hugging Face dataset name. Default: the built-in corpus (Python's own documentation topics).")
    text_field: str = option("text", "Field/column holding the text in .jsonl, .parquet and datasets.")
    split: str = option("train", "Dataset split, for Hugging Face datasets.")
