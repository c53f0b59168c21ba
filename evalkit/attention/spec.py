"""``AttentionSpec``: which variant a run uses, with its scalar parameters, as a typed record.

The spec is what a manifest stores and what the CLI builds from its flags. Per-head tables
(s_h, b_h differing across layers and heads) do not fit in it: they live in the model (as
``ssmax_s``/``ssmax_b`` tensors, see ``apply.py``) or in the file named by ``params_file``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from evalkit.attention.variants import PARAMETER_FLAGS, get_variant
from evalkit.errors import ConfigError

NMode = Literal["position", "length"]
N_MODES: tuple[str, ...] = ("position", "length")


@dataclass(frozen=True)
class AttentionSpec:
    """One attention variant and its parameters.

    n_mode: "position" counts, for each query, the keys it may attend to (causal: i + 1);
    "length" uses the total key length for every query (as the PyPI ``scalable-softmax`` does).
    """

    variant: str = "softmax"
    s: float | None = None
    b: float | None = None
    train_length: int | None = None
    n_mode: NMode = "position"
    params_file: str | None = None

    def __post_init__(self) -> None:
        get_variant(self.variant)  # unknown name -> ConfigError with "did you mean"
        if self.n_mode not in N_MODES:
            raise ConfigError(
                f"unknown n mode {self.n_mode!r}", f"use one of {', '.join(N_MODES)}"
            )
        for name in ("s", "b"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise ConfigError(
                    f"{PARAMETER_FLAGS[name]} must be a finite number, got {value!r}",
                    "give one number, or a per-layer/head table with --attention-params",
                )
        if self.train_length is not None and (
            isinstance(self.train_length, bool)
            or not isinstance(self.train_length, int)
            or self.train_length < 2
        ):
            raise ConfigError(
                f"--train-length must be an integer >= 2, got {self.train_length!r}",
                "pass the context length the model was trained with, e.g. --train-length 2048",
            )

    def require(self, available: set[str] | frozenset[str] = frozenset()) -> None:
        """Raise ConfigError if a parameter the variant needs is neither in the spec nor in
        ``available`` (the names of per-head tensors the model or a params file provides)."""
        for name in get_variant(self.variant).parameters:
            if getattr(self, name) is None and name not in available:
                flag = PARAMETER_FLAGS[name]
                where = "" if name == "train_length" else " (or a per-head table in the checkpoint)"
                raise ConfigError(
                    f"attention variant {self.variant!r} needs {flag}{where}",
                    f"pass {flag} VALUE",
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict for manifests and config.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AttentionSpec":
        """Inverse of ``to_dict``; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"unknown attention spec keys {sorted(unknown)}",
                f"allowed keys: {', '.join(sorted(known))}",
            )
        return cls(**data)


def parse_attention_list(text: str) -> list[str]:
    """``"softmax,ssmax"`` -> ``["softmax", "ssmax"]``, each name checked against the registry."""
    names = [part.strip() for part in str(text).split(",")]
    if not text or any(not name for name in names):
        raise ConfigError(
            f"empty attention variant in {text!r}",
            "give comma-separated names, e.g. --attention softmax,ssmax",
        )
    seen: list[str] = []
    for name in names:
        get_variant(name)
        if name in seen:
            raise ConfigError(f"attention variant {name!r} listed twice in {text!r}", "list it once")
        seen.append(name)
    return seen
