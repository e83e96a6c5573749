"""One typed error hierarchy for all of edgepack.

Every error carries an ``exit_code`` (what the CLI exits with) and an optional
``where`` (the file, key or field at fault) and ``hint`` (how to fix it), so the
CLI can print one line that says what, where and how. Codes are documented in
``docs/cli.md``; ``tests/test_errors.py`` checks that every code is.
"""

from __future__ import annotations

__all__ = [
    "EXIT_CODES",
    "ArchiveTooLargeError",
    "ArtifactHashError",
    "ArtifactSizeError",
    "BadSignatureError",
    "BundleError",
    "ConfigError",
    "ConversionError",
    "CorruptArchiveError",
    "CorruptStateError",
    "DataError",
    "DuplicateMemberError",
    "EdgepackError",
    "ExpiredError",
    "FleetError",
    "KeyFileError",
    "ManifestError",
    "ManifestParseError",
    "ManifestSchemaError",
    "MemberSizeError",
    "MissingMemberError",
    "ParityError",
    "PathTraversalError",
    "PerformanceError",
    "ThresholdError",
    "TrustError",
    "UnsignedError",
    "UntrustedKeyError",
    "UpdateError",
    "UsageError",
    "VerificationError",
]


class EdgepackError(Exception):
    """Base of every error edgepack raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def one_line(self) -> str:
        """The error as a single line: what, where, and how to fix it."""
        parts = [self.message.replace("\n", " ")]
        if self.where:
            parts.append(f"(at {self.where})")
        line = " ".join(parts)
        if self.hint:
            line += f"; fix: {self.hint}"
        return line

    def __str__(self) -> str:
        return self.one_line()

    def to_dict(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "where": self.where,
            "hint": self.hint,
            "exit_code": self.exit_code,
        }


class UsageError(EdgepackError):
    """The command line or API call itself is wrong."""

    exit_code = 2


class ConfigError(EdgepackError):
    """A recipe, config file or environment variable is invalid."""

    exit_code = 3


class BundleError(EdgepackError):
    """A bundle file is malformed or unsafe to read."""

    exit_code = 4


class CorruptArchiveError(BundleError):
    """The archive is truncated or is not a zip file."""


class PathTraversalError(BundleError):
    """A member name would escape the bundle (``../x`` or an absolute path)."""


class DuplicateMemberError(BundleError):
    """Two members share one name; which one a reader sees would be ambiguous."""


class MemberSizeError(BundleError):
    """A member decompresses to more bytes than it declares."""


class ArchiveTooLargeError(BundleError):
    """The archive, or what it expands to, is over the configured limit."""


class MissingMemberError(BundleError):
    """A member the manifest or format requires is absent."""


class ManifestError(BundleError):
    """The manifest cannot be used."""


class ManifestParseError(ManifestError):
    """The manifest is not valid JSON (or has duplicate keys)."""


class ManifestSchemaError(ManifestError):
    """The manifest is JSON but a required field is missing or mistyped."""


class VerificationError(EdgepackError):
    """Something failed a signature, hash, size or expiry check."""

    exit_code = 5


class UnsignedError(VerificationError):
    """The bundle carries no signatures at all."""


class BadSignatureError(VerificationError):
    """A trusted key's signature does not match: the manifest changed after signing."""


class UntrustedKeyError(VerificationError):
    """Every signature comes from a key the trust file does not list."""


class ThresholdError(VerificationError):
    """Fewer valid signatures from trusted keys than the threshold needs."""


class ArtifactSizeError(VerificationError):
    """An artifact's size differs from the manifest (for example, it was swapped)."""


class ArtifactHashError(VerificationError):
    """An artifact's sha256 differs from the manifest (for example, a flipped byte)."""


class ExpiredError(VerificationError):
    """The bundle's ``expires_at`` is in the past."""


class TrustError(VerificationError):
    """A trust file is malformed, or a rotation to a new one is not allowed."""


class KeyFileError(EdgepackError):
    """A key file is missing, malformed, too open, or the passphrase is wrong."""

    exit_code = 6


class ConversionError(EdgepackError):
    """A model could not be loaded, exported or quantized."""

    exit_code = 7


class ParityError(EdgepackError):
    """One or more artifacts drift from the original model beyond their budget."""

    exit_code = 8

    def __init__(self, message: str, *, failures: list[dict] | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.failures = failures or []


class DataError(EdgepackError):
    """Calibration, eval or training data is unreadable or does not fit the model."""

    exit_code = 9


class UpdateError(EdgepackError):
    """An install or update on the device was refused or rolled back."""

    exit_code = 10


class PerformanceError(EdgepackError):
    """Under ``--strict``: a quantized artifact is slower than its fp32 sibling."""

    exit_code = 11


class FleetError(EdgepackError):
    """The fleet server refused a request or could not be reached."""

    exit_code = 12


class CorruptStateError(EdgepackError):
    """Stored state is damaged (a database page, a WAL frame): restore it from a backup."""

    exit_code = 13


def _collect_exit_codes() -> dict[int, str]:
    codes: dict[int, str] = {0: "success", 1: "EdgepackError", 130: "interrupted"}
    stack: list[type[EdgepackError]] = [EdgepackError]
    while stack:
        cls = stack.pop()
        codes.setdefault(cls.exit_code, cls.__name__)
        stack.extend(cls.__subclasses__())
    codes[70] = "internal error (a bug: please report it with --debug output)"
    return dict(sorted(codes.items()))


EXIT_CODES: dict[int, str] = _collect_exit_codes()
