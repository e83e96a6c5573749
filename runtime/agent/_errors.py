"""The device agent's typed errors, each under an edgepack base so the CLI exit
codes are inherited (delivery checks exit 5, fleet problems exit 12)."""

from __future__ import annotations

from edgepack import FleetError, VerificationError

__all__ = [
    "DownloadInterruptedError",
    "EndlessDataError",
    "EnrollmentError",
    "ServerRefusedError",
    "ServerUnreachableError",
    "TargetMismatchError",
    "TargetNotTrustedError",
    "TufVerificationError",
]


class TufVerificationError(VerificationError):
    """TUF metadata failed verification: rollback, freeze, mix-and-match or a bad signature."""


class TargetNotTrustedError(TufVerificationError):
    """The server assigned a target that no trusted TUF role vouches for (arbitrary target)."""


class TargetMismatchError(TufVerificationError):
    """A downloaded target's length or sha256 differs from its signed TUF metadata."""


class EndlessDataError(TufVerificationError):
    """The server sent more bytes than the signed metadata allows (endless-data attack)."""


class ServerUnreachableError(FleetError):
    """The fleet server could not be reached; the agent keeps serving and backs off."""


class DownloadInterruptedError(ServerUnreachableError):
    """A download broke off midway; the part file is kept and the next try resumes it."""


class ServerRefusedError(FleetError):
    """The fleet server answered with an HTTP error."""

    def __init__(self, message: str, *, status: int = 0, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.status = status


class EnrollmentError(FleetError):
    """The device is not enrolled, or enrollment was refused."""
