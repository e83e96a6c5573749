"""JSON API errors: one exception type with ``status_code`` and ``to_dict()``.

Every error the server answers with is an ``ApiError`` (a ``FleetError``, so it
carries edgepack's exit code when the CLI raises it) and is rendered as
``{"error": "<ClassName>", "message": ..., "hint": ...}`` by the app factory.
"""

from __future__ import annotations

from typing import Any

from edgepack import FleetError

__all__ = [
    "ApiError",
    "AuthError",
    "BadRequestError",
    "ConflictError",
    "ForbiddenError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "RolloutStateError",
    "UnknownDeviceError",
]


class ApiError(FleetError):
    """An error answered to an HTTP client as JSON."""

    status_code: int = 400

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None,
                 status_code: int | None = None, error: str | None = None) -> None:
        super().__init__(message, where=where, hint=hint)
        if status_code is not None:
            self.status_code = status_code
        self.error_name = error or type(self).__name__

    #: extra response headers (for example Retry-After on a 429)
    headers: dict[str, str] = {}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"error": self.error_name, "message": self.message, "hint": self.hint}
        if self.where:
            d["where"] = self.where
        return d


class BadRequestError(ApiError):
    """The body or a parameter is malformed."""


class AuthError(ApiError):
    """No valid credentials."""

    status_code = 401


class UnknownDeviceError(AuthError):
    """The request names a device the server does not know (or has revoked)."""


class ForbiddenError(ApiError):
    """Valid credentials, but not for this resource (for example, another device's)."""

    status_code = 403


class NotFoundError(ApiError):
    """The resource does not exist, or the caller may not see it (HTTP 404)."""

    status_code = 404


class ConflictError(ApiError):
    """The request conflicts with the current state (a duplicate, a used token, a lower version)."""

    status_code = 409


class RolloutStateError(ConflictError):
    """The action is not allowed in the rollout's current state."""


class PayloadTooLargeError(ApiError):
    """The request body is over the configured size limit (HTTP 413)."""

    status_code = 413


class RateLimitedError(ApiError):
    """Too many failed attempts from one client in the current window (HTTP 429, with Retry-After)."""

    status_code = 429

    def __init__(self, message: str, *, retry_after: int, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, where=where, hint=hint)
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "retry_after": self.retry_after}
