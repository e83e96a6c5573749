"""Errors the build pipeline raises, as subclasses of the edgepack bases so
the CLI exit codes (docs/cli.md) are inherited."""

from __future__ import annotations

from edgepack import (
    ConfigError,
    ConversionError,
    DataError,
    ParityError,
    PerformanceError,
    UsageError,
)

__all__ = [
    "CalibrationRequiredError",
    "DataMismatchError",
    "ModelLoadError",
    "NonFiniteDataError",
    "OutputDirError",
    "ParityFailedError",
    "QuantizedSlowerError",
    "UnknownKeyError",
    "UnsupportedError",
    "UnsupportedOpError",
]


class ModelLoadError(ConversionError):
    """The model file is unreadable, or is not a model type edgepack knows."""


class UnsupportedError(ConversionError):
    """The requested conversion path does not exist; the message says why."""


class UnsupportedOpError(UnsupportedError):
    """An operator in the model cannot be expressed in the target format."""

    def __init__(self, message: str, *, op: str, target: str, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.op, self.target = op, target


class CalibrationRequiredError(DataError):
    """Static int8 was asked for without calibration data."""


class DataMismatchError(DataError):
    """Data whose shape or dtype does not fit the model's input spec."""


class NonFiniteDataError(DataError):
    """Data holding NaN or Inf values."""


class UnknownKeyError(ConfigError):
    """A recipe key edgepack does not know (probably misspelled)."""


class OutputDirError(UsageError):
    """The output directory cannot be created or written."""


class ParityFailedError(ParityError):
    """One or more artifacts are over their parity budget; ``failures`` lists each."""


class QuantizedSlowerError(PerformanceError):
    """Under strict mode, a quantized artifact is slower than its fp32 sibling."""
