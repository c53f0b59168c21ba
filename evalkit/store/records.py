"""Samples as portable records: exact token ids, their text, keys and provenance, so a prompt can be
rebuilt and rescored outside evalkit. Tasks build their export from these; ``evalkit export`` writes them."""

from __future__ import annotations

from evalkit.core.errors import ConfigError
from evalkit.core.requests import TokenLossRequest


def decode_text(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)


def needle_records(numbered, tokenizer, seed: int) -> list[dict]:
    """One samples-file record per (sample id, NeedleSample): ids and text, keys, span and provenance."""
    from evalkit.data.options import provenance

    records = []
    for sample_id, s in numbered:
        rows = provenance(s, seed)
        start, end = rows["needle_start"], rows["needle_end"]
        records.append(
            {
                "id": sample_id,
                "prompt": decode_text(tokenizer, s.prompt_ids),
                "answer": s.answer_text,
                "prompt_ids": s.prompt_ids.tolist(),
                "answer_ids": s.answer_ids.tolist(),
                "answer_ids_text": decode_text(tokenizer, s.answer_ids),
                "context_length": s.context_length,
                "depth": s.depth,
                "trial": s.trial,
                **({"needle": decode_text(tokenizer, s.prompt_ids[start:end])} if start >= 0 else {}),
                **rows,
            }
        )
    return records


def token_records(task) -> list[dict]:
    """Each sample's whole token sequence (perplexity windows), with its keys and provenance."""

    records = []
    for sample in task.samples():
        if not isinstance(sample.request, TokenLossRequest):
            raise ConfigError(f"task {task.name} cannot export its prompts", "export a needle, focus or perplexity run")
        ids = sample.request.tokens
        records.append(
            {
                "id": sample.id,
                **sample.keys,
                **sample.meta,
                "seed": task.context.seed,
                "token_ids": ids.tolist(),
                "text": decode_text(task.context.tokenizer, ids),
            }
        )
    return records
