"""The runtime's typed errors, each a subclass of an edgepack base so the CLI
exit codes (and their help text) are inherited rather than invented here."""

from __future__ import annotations

from edgepack import ConfigError, DataError, EdgepackError, UpdateError

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "HealthCheckError",
    "InputValidationError",
    "InstallError",
    "OutOfRangeError",
    "ParamUpdateError",
    "TrainingError",
]


class InputValidationError(DataError):
    """An input handed to ``predict`` does not match the manifest's I/O contract."""


class OutOfRangeError(InputValidationError):
    """An input holds values outside the range seen in training (``on_out_of_range="reject"``)."""


class BackendUnavailableError(ConfigError):
    """No installed backend can run any artifact of the bundle."""


class BackendError(EdgepackError):
    """A backend failed to load or run an artifact that passed verification."""


class InstallError(UpdateError):
    """The install store refused an install, or its state directory is unusable."""


class HealthCheckError(InstallError):
    """A freshly installed version failed its health check (and was rolled back)."""

    def __init__(self, message: str, *, reason: dict | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.reason = reason or {}


class ParamUpdateError(UpdateError):
    """A parameter update is malformed, for the wrong base, or rebuilds to the wrong hash."""


class TrainingError(DataError):
    """Local training cannot run: no trainable head, bad labels, or a missing trainer backend."""
