"""The error hierarchy. Every error says what was wrong and how to fix it."""

from __future__ import annotations


class RowrankError(Exception):
    """Base of every error rowrank raises on purpose."""


class DataError(RowrankError):
    """A dataset breaks the documented schema; the message names file, column, rule and rows."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        head = f"{len(problems)} problem(s) in the dataset:\n" if len(problems) > 1 else ""
        super().__init__(head + "\n".join(problems))


class ImportFormatError(RowrankError):
    """Source files for an import are missing or malformed."""


class ConfigError(RowrankError):
    """An engine or variants config is invalid (unknown key, wrong type, unknown ranker)."""


class NotFittedError(RowrankError):
    """A component was used before fit()."""


class ModelLoadError(RowrankError):
    """A saved model directory is missing, from another version, or corrupt."""


class BadRequestError(RowrankError):
    """A page request has an invalid value (unknown device, malformed time, ...)."""


class RankerContractError(TypeError):
    """A ranker returned something that is not a list of CandidateRow: a programmer error, so a
    TypeError the pipeline never swallows (not a RowrankError)."""
