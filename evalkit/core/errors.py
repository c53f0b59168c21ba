"""User-facing errors.

Every mistake a user can make (bad path, bad option, corrupt file, ...) raises an
``EvalkitError`` carrying the problem and the fix. The CLI prints it as one line and
exits with code 2; nothing else in evalkit decides exit codes for user errors.
"""

from __future__ import annotations

import difflib


class EvalkitError(Exception):
    """A problem with the user's input, with a hint on how to fix it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return f"{self.problem}: {self.fix}" if self.fix else self.problem


class ModelLoadError(EvalkitError):
    """A checkpoint is missing, corrupt, unsafe to load, or not a model."""


class ConfigError(EvalkitError):
    """An option value, length spec or config file is invalid."""


class DataError(EvalkitError):
    """A corpus or dataset is missing, empty or too short."""


class ResultsError(EvalkitError):
    """An output folder cannot be used (holds another run, disk full, ...)."""


def did_you_mean(name: str, choices, cutoff: float = 0.6) -> str:
    """ "did you mean 'x'? " for the choice closest to a mistyped name, or "" when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=cutoff)
    return f"did you mean {close[0]!r}? " if close else ""
