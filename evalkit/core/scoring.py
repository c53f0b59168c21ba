"""How generated text is scored against references: one module for every task that generates.

``parse_answer`` reads a needle answer as a reader would; ``string_match_all`` and
``string_match_part`` are RULER's metrics (eval/synthetic/constants.py), on RULER's
postprocessed prediction (eval/evaluate.py: stripped, control characters turned into newlines),
case-insensitive, as fractions in [0, 1] rather than RULER's percent.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f]")


def parse_answer(text: str, gold: str) -> str:
    """The answer as a reader takes it from a continuation: its first line, as many words as the gold
    answer has, trailing punctuation dropped ("48213. Remember it." -> "48213")."""
    line = (text.strip().splitlines() or [""])[0]
    return " ".join(line.split()[: len(gold.split())]).rstrip(".,;:!?")


def postprocess(prediction: str) -> str:
    """RULER's postprocess_pred: control characters (newlines, tabs) become newlines, then strip."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def string_match_all(prediction: str, references) -> float:
    """The fraction of the references found in the prediction (RULER's score for NIAH, VT, CWE, FWE)."""
    text = postprocess(prediction).lower()
    references = list(references)
    return sum(r.lower() in text for r in references) / len(references)


def string_match_part(prediction: str, references) -> float:
    """1 when any reference is in the prediction, else 0 (RULER's score for QA)."""
    text = postprocess(prediction).lower()
    return float(any(r.lower() in text for r in references))


STRING_MATCH = {"all": string_match_all, "part": string_match_part}
