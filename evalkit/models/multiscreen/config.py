"""The hyperparameters of a Multiscreen model, stored as a checkpoint's ``config.json``.

Every number that decides the function is here (design.md, "Screening"); nothing is implied by a
class name. ``infinite_tiles`` is the inference rule made explicit: a tile whose learned window
``exp(s_w) + 1`` exceeds ``training_length`` screens every earlier key (w = infinity, no MiPE
rotation). It is computed from the weights when a checkpoint is saved and read back as recorded,
so the function a checkpoint evaluates is the one its folder says.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from evalkit.core.errors import ConfigError

MODEL_TYPE = "multiscreen"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class MultiscreenConfig:
    """Sizes, the MiPE threshold, the initialization scale and the training length.

    The paper's scaling is ``layers = tiles = psi``, ``width = psi ** 2`` (``from_psi``); any
    other shape is allowed (the reference study's tiny models are not square).
    """

    vocab_size: int
    width: int  # d_E, the residual stream
    layers: int  # N_L
    tiles: int  # N_H, tiles per layer
    key_dim: int = 16  # d_K
    value_dim: int = 64  # d_V
    mipe_threshold: float = 256.0  # w_th: windows at or above it get no MiPE rotation
    training_length: int = 4096  # the longest training sequence: windows beyond it become infinite
    init_scale: float = 0.1  # the paper's 0.1 in every initial standard deviation
    infinite_tiles: tuple[tuple[int, ...], ...] | None = None  # per layer, tile indices at w = infinity
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    source: str = "evalkit"  # or "multiscreen-hf" (a community port's folder, read by checkpoint.py)

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "width", "layers", "tiles", "key_dim", "value_dim", "training_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.key_dim, int) and self.key_dim < 2:
            problems.append("key_dim must be at least 2 (MiPE rotates the first two coordinates)")
        if not (self.mipe_threshold > 0 and math.isfinite(self.mipe_threshold)):
            problems.append(f"mipe_threshold must be a positive number, got {self.mipe_threshold!r}")
        if not self.init_scale > 0:
            problems.append(f"init_scale must be > 0, got {self.init_scale!r}")
        if self.infinite_tiles is not None:
            if len(self.infinite_tiles) != self.layers:
                problems.append(f"infinite_tiles has {len(self.infinite_tiles)} layers, the model {self.layers}")
            elif any(not 0 <= t < self.tiles for layer in self.infinite_tiles for t in layer):
                problems.append(f"infinite_tiles names a tile outside 0..{self.tiles - 1}")
        if problems:
            raise ConfigError("bad Multiscreen config: " + "; ".join(problems), "fix config.json")

    @classmethod
    def from_psi(cls, psi: int, vocab_size: int, **changes: Any) -> MultiscreenConfig:
        """The paper's family: N_L = N_H = psi, d_E = psi ** 2 (psi 8: about 4M parameters with its vocabulary)."""
        return cls(vocab_size=vocab_size, width=psi * psi, layers=psi, tiles=psi, **changes)

    # -- config.json ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        record = {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION, **asdict(self)}
        if self.infinite_tiles is not None:
            record["infinite_tiles"] = [list(layer) for layer in self.infinite_tiles]
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any], where: str = "config.json") -> MultiscreenConfig:
        record = dict(record)
        if record.pop("model_type", None) != MODEL_TYPE:
            raise ConfigError(f"{where} is not a Multiscreen config", f'it needs "model_type": "{MODEL_TYPE}"')
        version = record.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ConfigError(f"{where} has format_version {version}", f"this evalkit reads {FORMAT_VERSION}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise ConfigError(
                f"{where} has unknown Multiscreen fields {unknown}", f"allowed: {', '.join(sorted(known))}"
            )
        if record.get("infinite_tiles") is not None:
            record["infinite_tiles"] = tuple(tuple(int(t) for t in layer) for layer in record["infinite_tiles"])
        return cls(**record)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / "config.json"
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path
