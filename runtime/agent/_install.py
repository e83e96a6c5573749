"""What the agent needs from the device's install store.

The agent delivers; the store installs. Keeping the seam this narrow means
the agent never touches slots itself: ``install_bundle`` puts a verified
bundle into the inactive slot, runs its health check, and activates it or
rolls back (raising ``HealthCheckError`` with the reason), all inside the
runtime's A/B store (``runtime.InstallStore``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from edgepack import UpdateError

from .._errors import HealthCheckError, InstallError, ParamUpdateError
from .._model import Model
from .._store import InstallStore

__all__ = ["Installer", "StoreInstaller"]

#: store reason codes meaning "this update does not fit what the device runs" (try the full one)
_PARAM_CODES = ("wrong_base_version", "param_hash_mismatch")


@runtime_checkable
class Installer(Protocol):
    """The device side of an install: A/B slots, health check, activate or roll back."""

    def active_version(self) -> int | None:
        """The version serving now (None before the first install)."""

    def install_bundle(self, path: Path) -> dict[str, Any]:
        """Install a downloaded, TUF-verified bundle; return facts for the report.

        Raises:
            VerificationError: the bundle fails its own signature check.
            HealthCheckError: the new version failed its health check and was rolled back.
            InstallError: the store could not install it.
        """

    def install_params(self, name: str, version: int, data: bytes) -> dict[str, Any]:
        """Apply a parameter update to the active model (same health gate as a bundle).

        Raises:
            ParamUpdateError, HealthCheckError, InstallError
        """

    def telemetry(self) -> dict[str, Any] | None:
        """A telemetry snapshot of the serving model, or None."""

    def slot_release(self, which: str) -> dict[str, Any] | None:
        """What the ``"active"`` or ``"previous"`` slot holds, as delivered: ``name``, ``version``,
        ``kind`` (``bundle`` or ``params``) and the ``sha256`` of the delivered file; None if empty.

        Raises:
            InstallError: the slot cannot be read.
        """

    def rollback(self, reason: str) -> dict[str, Any]:
        """Make the previous slot active again (it is verified and loaded first); return facts.

        Raises:
            InstallError: there is no previous slot, or it no longer verifies.
        """


def _raise_for(result: Any) -> dict[str, Any]:
    """Turn a refused ``InstallResult`` into a typed error that keeps the store's reason."""
    if result.ok:
        return result.to_dict()
    reason = result.reason or {}
    code = reason.get("code")
    cls: type[UpdateError] = (HealthCheckError if code == "health_check_failed"
                              else ParamUpdateError if code in _PARAM_CODES else InstallError)
    err = cls(f"{result.action} of v{result.version} refused ({reason.get('code')}): {reason.get('message')}",
              where=f"v{result.version}", hint="the active version keeps serving")
    err.reason = reason  # type: ignore[attr-defined]  (HealthCheckError has it; InstallError gains it here)
    raise err


class StoreInstaller:
    """``Installer`` over the runtime's A/B ``InstallStore``; also loads the serving model."""

    def __init__(self, store: InstallStore) -> None:
        self.store = store
        self._model: Model | None = None

    def active_version(self) -> int | None:
        rec = self.store.active()
        return rec.version if rec else None

    def install_bundle(self, path: Path) -> dict[str, Any]:
        return _raise_for(self.store.install(path))

    def install_params(self, name: str, version: int, data: bytes) -> dict[str, Any]:
        return _raise_for(self.store.apply_param_update(data))

    def slot_release(self, which: str) -> dict[str, Any] | None:
        rec = {"active": self.store.active, "previous": self.store.previous}[which]()
        if rec is None:
            return None
        return {"name": rec.name, "version": rec.version, "kind": "params" if rec.params_sha256 else "bundle",
                "sha256": self.store.delivered_sha256(rec)}

    def rollback(self, reason: str) -> dict[str, Any]:
        return _raise_for(self.store.rollback(reason))

    def model(self) -> Model:
        """The active model, loaded from the store (reloaded after an install).

        Works with no network at all: this is what keeps serving while offline.

        Raises:
            InstallError: nothing is installed.
        """
        version = self.active_version()
        if self._model is None or self._model.version != version:
            self._model = self.store.load_active()
        return self._model

    def telemetry(self) -> dict[str, Any] | None:
        if self._model is None or self._model.version != self.active_version():
            return None
        return self._model.telemetry.snapshot()
