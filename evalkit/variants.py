"""Turning ``--attention`` names into the runner's variants for one loaded model."""

from __future__ import annotations

from dataclasses import dataclass

from evalkit.errors import ConfigError
from evalkit.runner import Variant


def resolve_variants(loaded, names, params) -> list[Variant]:
    variants = []
    for name in names:
        if name in ("auto", "softmax"):
            variants.append(_Described("softmax", lambda model: None, {"variant": "softmax"}))
        else:
            raise ConfigError(f"unknown attention variant {name!r}", "known: softmax")
    return variants


@dataclass(frozen=True)
class _Described(Variant):
    describe: dict = None
