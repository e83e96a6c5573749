"""Errors of the federated package, as subclasses of edgepack's bases.

Each inherits its parent's exit code. Rejections of *device updates* are not
errors: they come back as data (:class:`~edgepack.federated.Rejection`), so a
server can record and show them (STYLE rule 9). These errors are for misuse of
the API and for files that cannot be trusted (a corrupt accumulator on disk).
"""

from __future__ import annotations

from .._errors import ConfigError, DataError, VerificationError

__all__ = [
    "AccumulatorStateError",
    "AggregationError",
    "DeviceUpdateFormatError",
    "FederatedConfigError",
    "UpdateShapeError",
]


class FederatedConfigError(ConfigError):
    """A federated config (policy, optimizer, DP, compression) has an invalid field."""


class AggregationError(DataError):
    """An aggregator was given arrays that do not fit its parameter spec, or is empty."""


class AccumulatorStateError(DataError):
    """A persisted accumulator or optimizer state file is truncated, corrupt or for another spec."""


class DeviceUpdateFormatError(VerificationError):
    """A device-update blob is malformed: bad framing, header, sizes or tensor encoding."""


class UpdateShapeError(DeviceUpdateFormatError):
    """A device update's tensor names, shapes or dtypes differ from the base model's."""
