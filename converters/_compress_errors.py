"""Errors the compression passes raise (distill, prune, structured prune,
search), as subclasses of the edgepack bases so CLI exit codes are inherited
(docs/cli.md): bad settings are ``ConfigError`` (3), models a pass cannot
handle are ``ConversionError`` (7), missing or unfit data is ``DataError`` (9).
"""

from __future__ import annotations

from edgepack import ConfigError, ConversionError, DataError

__all__ = [
    "EvalDataRequiredError",
    "SparsityRangeError",
    "StudentDerivationError",
    "StudentMismatchError",
    "UnprunableLayerError",
]


class SparsityRangeError(ConfigError):
    """A sparsity or pruning ratio outside [0, 1)."""


class StudentMismatchError(ConversionError):
    """The student's output shape differs from the teacher's, so logits cannot be matched."""


class StudentDerivationError(ConversionError):
    """A student cannot be derived from the teacher by a width multiplier (unsupported layer)."""

    def __init__(self, message: str, *, layer: str, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.layer = layer


class UnprunableLayerError(ConversionError):
    """Structured pruning cannot keep a layer consistent; ``layer`` names it."""

    def __init__(self, message: str, *, layer: str, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.layer = layer


class EvalDataRequiredError(DataError):
    """A pass or search that measures accuracy was given no labelled eval data."""
