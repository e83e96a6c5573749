"""The device agent: check in, refresh TUF, deliver the assigned release, take part in rounds, report.

One ``step`` is one check-in. Nothing in a step stops the model that is
serving: a network failure, a refused update or a broken download only
changes *when* the next step runs (exponential backoff) and what is reported.
Everything the agent must remember (enrollment, a download in progress,
reports not yet accepted) is on disk, so a restart resumes where it stopped.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgepack import (
    BundleError,
    SigningKey,
    Trust,
    UpdateError,
    VerificationError,
    generate_key,
    load_signing_key,
    save_key_pair,
    verify_bundle,
)
from edgepack._device_auth import sign_request

from .._errors import ParamUpdateError
from .._telemetry import gate_summary
from ._config import AgentConfig, next_delay
from ._delta import bundle_target_path, delta_target_path, params_target_path
from ._errors import (
    DownloadInterruptedError,
    EnrollmentError,
    ServerRefusedError,
    ServerUnreachableError,
    TargetMismatchError,
    TargetNotTrustedError,
)
from ._http import FleetClient
from ._install import Installer
from ._participant import RoundParticipant, read_conditions
from ._state import AgentState, Outbox
from ._tuf_client import TufClient

__all__ = ["Agent"]

log = logging.getLogger("edgepack.agent")
KEY_NAME = "device"


def _reason(e: BaseException) -> str:
    msg = getattr(e, "message", None) or str(e)
    return f"{type(e).__name__}: {msg}"


class Agent:
    """A device's agent, bound to one state directory."""

    def __init__(self, state_dir: str | Path, server_url: str, installer: Installer, trust: Trust,
                 pinned_root: bytes, *, config: AgentConfig | None = None, rng: random.Random | None = None,
                 conditions: Callable[[], dict[str, bool]] | None = None) -> None:
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config or AgentConfig()
        self.installer = installer
        self.trust = trust
        self.state = AgentState.load(self.dir)
        self.state.server = server_url
        self.api = FleetClient(server_url, timeout=self.config.timeout_s,
                               max_clock_correction_s=self.config.max_clock_correction_s)
        self.tuf = TufClient(self.dir, server_url, pinned_root, timeout=self.config.timeout_s, auth=self._auth)
        self.outbox = Outbox(self.dir / "outbox")
        self.rng = rng or random.Random()
        if conditions is None and self.config.conditions_file:
            path = self.config.conditions_file
            conditions = lambda: read_conditions(path)  # noqa: E731 (re-read at every check-in)
        self.conditions = conditions or (lambda: {"charging": True, "idle": True, "wifi": True})
        #: federated rounds, when the device has local data (``AgentConfig.fl_data``)
        self.participant = RoundParticipant(self.dir, self.config) if self.config.fl_data else None
        self.last_delivery: dict[str, Any] | None = None
        self._poll_after: float | None = None
        self._last_telemetry = 0.0
        self._identity: SigningKey | None = None

    # ---- identity ---------------------------------------------------------------------------
    def _key(self) -> SigningKey:
        """The device identity key, created (0600) on first use and cached."""
        if self._identity is None:
            path = self.dir / f"{KEY_NAME}.key"
            if not path.exists():
                save_key_pair(generate_key(), self.dir, KEY_NAME)
            self._identity = load_signing_key(path)
        return self._identity

    def _auth(self, method: str, path: str) -> dict[str, str]:
        if not self.state.device_id:
            return {}
        return sign_request(self._key(), self.state.device_id, method, path, b"", now=self.api.now())

    def enroll(self, token: str, name: str, tags: dict[str, str] | None = None) -> str:
        """Register this device's key with a one-time enrollment token; return the device id.

        Raises:
            EnrollmentError: the server refused the token.
            ServerUnreachableError: the server cannot be reached.
        """
        body = {"token": token, "public_key": self._key().public.raw.hex(), "name": name, "tags": tags or {}}
        try:
            _, doc = self.api.call("POST", "/api/v1/enroll", body)
        except ServerRefusedError as e:
            raise EnrollmentError(f"enrollment refused: {e.message}", hint="ask for a fresh enrollment token") from e
        self.state.device_id, self.state.group = doc["device_id"], doc.get("group")
        self.state.save(self.dir)
        return str(doc["device_id"])

    def _signed(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if not self.state.device_id:
            raise EnrollmentError("this device is not enrolled", where=str(self.dir),
                                  hint="run 'edgepack device run --enroll-token TOKEN' once")
        _, doc = self.api.call(method, path, body, key=self._key(), device_id=self.state.device_id)
        return doc

    # ---- reports ----------------------------------------------------------------------------
    def report(self, kind: str, ok: bool, *, version: int | None = None, reason: str | None = None,
               data: dict[str, Any] | None = None) -> None:
        """Queue a report on disk; ``flush`` sends it (now or after the next contact)."""
        self.outbox.put({"kind": kind, "release_version": version, "ok": ok, "reason": reason,
                         "data": data or {}})

    def flush(self) -> int:
        """Send queued reports oldest first; return how many the server accepted.

        Raises:
            ServerUnreachableError: stops at the first report that cannot be sent.
        """
        sent = 0
        for path, report in self.outbox.pending():
            try:
                self._signed("POST", f"/api/v1/devices/{self.state.device_id}/reports", report)
            except ServerRefusedError as e:
                if e.status >= 500 or e.status in (401, 429):
                    raise
                log.warning("server rejected a report for good (%s); dropping it", e.message)
            path.unlink(missing_ok=True)
            sent += 1
        return sent

    # ---- one check-in -----------------------------------------------------------------------
    def step(self) -> float:
        """One check-in; returns the seconds to wait before the next one."""
        try:
            self.flush()
            hb = self._signed("POST", f"/api/v1/devices/{self.state.device_id}/heartbeat",
                              {"active_version": self.installer.active_version(), "state": self.conditions()})
            poll_after = hb.get("poll_after_s") if isinstance(hb, dict) else None
            self._poll_after = float(poll_after) if isinstance(poll_after, (int, float)) else None
            self.state.last_contact = time.time()
            self.tuf.refresh()
            doc = self._signed("GET", f"/api/v1/devices/{self.state.device_id}/assignment")
            release = doc.get("release") if isinstance(doc, dict) else None
            if release:
                self._deliver(release)
            if self.participant is not None:  # after delivery: a just-promoted release trains next
                self.participant.step(self.api, str(self.state.device_id), self._key(), self.installer,
                                      self.conditions)
            self._maybe_telemetry()
            self.flush()
            self.state.consecutive_failures = 0
        except (ServerUnreachableError, ServerRefusedError, VerificationError) as e:
            # Includes DownloadInterruptedError (resumes next time) and TUF refusals of the
            # repository as a whole (freeze, rollback): keep serving, report, back off.
            self.state.consecutive_failures += 1
            log.warning("check-in failed (%d in a row): %s", self.state.consecutive_failures, _reason(e))
            if isinstance(e, VerificationError):
                self.report("status", False, reason=_reason(e))
        finally:
            self.state.save(self.dir)
        return next_delay(self.config, self.state.consecutive_failures, self._poll_after, self.rng)

    def run(self, *, max_steps: int | None = None, stop: threading.Event | None = None) -> int:
        """Check in until ``stop`` is set or ``max_steps`` ran; return the steps run."""
        stop = stop or threading.Event()
        steps = 0
        while not stop.is_set() and (max_steps is None or steps < max_steps):
            delay = self.step()
            steps += 1
            if max_steps is None or steps < max_steps:
                stop.wait(delay)
        return steps

    # ---- delivery ---------------------------------------------------------------------------
    def _already_has(self, release: dict[str, Any]) -> bool:
        v = int(release["version"])
        if v in self.state.failed_versions:
            return True  # reported once; the server decides what comes next
        return self.installer.active_version() == v

    def _deliver(self, release: dict[str, Any]) -> None:
        if self._already_has(release):
            return
        version = int(release["version"])
        active = self.installer.active_version()
        if active is not None and version < active:
            self._follow_rollback(release, active)
            return
        self.state.pending = dict(release)
        self.state.save(self.dir)
        try:
            if release.get("kind") == "params":
                facts = self._deliver_params(release)
            else:
                facts = self._deliver_bundle(release)
        except DownloadInterruptedError:
            raise  # pending stays; the part file resumes next step
        except (VerificationError, UpdateError, BundleError) as e:
            self.state.failed_versions = [*self.state.failed_versions, version][-50:]
            self.state.pending = None
            self.report("install", False, version=version, reason=_reason(e),
                        data={"target": release.get("target"), "reason": getattr(e, "reason", None)})
            return
        self.state.pending = None
        self.last_delivery = facts
        self.report("install", True, version=version, data=facts)

    # ---- fleet rollback ---------------------------------------------------------------------
    def _follow_rollback(self, release: dict[str, Any], active: int) -> None:
        """Go back to the previous slot if TUF, not just the (unsigned) assignment, says so.

        The assignment can be forged by anyone on the path, and a forged "go back to v1" is a
        downgrade attack; the signed metadata cannot be, and never goes backwards on the device.
        """
        version = int(release["version"])
        self.tuf.refresh()  # the rollback may be newer than this step's first refresh
        try:
            why = self._rollback_refusal(release)
            facts = None if why else self.installer.rollback(f"fleet rollback to v{version}: TUF withdrew v{active}")
        except UpdateError as e:  # the store could not read or restore the previous slot
            why, facts = f"the previous slot cannot be restored: {_reason(e)}", None
        if facts is not None:
            self.state.refused_rollback = None
            self.last_delivery = {**facts, "rolled_back": True, "from": active}
            self.report("install", True, version=version, data={"rolled_back": True, "from": active})
            return
        log.warning("refusing the assignment to go back to v%d from v%d: %s", version, active, why)
        if self.state.refused_rollback != [version, active]:  # reported once, re-checked every step
            self.state.refused_rollback = [version, active]
            self.report("install", False, version=version, reason=f"rollback refused: {why}",
                        data={"rolled_back": False, "from": active, "target": release.get("target")})

    def _rollback_refusal(self, release: dict[str, Any]) -> str | None:
        """Why the device must not go back to ``release``; None when TUF authenticates the rollback."""
        group = self.state.group
        if not group:
            return "the device does not know its group, so it cannot check its group's signed targets"
        active, prev = self.installer.slot_release("active"), self.installer.slot_release("previous")
        if active is None:
            return "nothing is installed"
        name, version = release.get("name"), int(release["version"])
        if prev is None or (prev["name"], prev["version"]) != (name, version):
            held = f"{prev['name']} v{prev['version']}" if prev else "nothing"
            return f"the previous slot holds {held}, not {name} v{version}"
        if self._listed_for(group, self._slot_target(group, active)) is not None:
            return (f"TUF still lists the active {active['name']} v{active['version']} for group {group}: "
                    "the rollback is not signed")
        info = self._listed_for(group, self._slot_target(group, prev))
        if info is None:
            return f"TUF does not list {name} v{version} for group {group}"
        if info.hashes.get("sha256") != prev["sha256"]:
            return f"TUF's sha256 for {info.path} differs from the file in the previous slot"
        return None

    @staticmethod
    def _slot_target(group: str, rel: dict[str, Any]) -> str:
        if rel["kind"] == "params":
            return params_target_path(rel["name"], rel["version"])
        return bundle_target_path(group, rel["name"], rel["version"])

    def _listed_for(self, group: str, target: str) -> Any:
        """The signed info of ``target`` unless TUF does not list it, or withdrew it for ``group``.

        A ``params/`` target serves every group, so a rollback withdraws it per group with the
        signed ``custom.withdrawn_groups`` (fleet_server ``TufRepository.set_params_withdrawn``).
        """
        info = self.tuf.target_info(target)
        if info is None or group in ((info.custom or {}).get("withdrawn_groups") or []):
            return None
        return info

    def _signed_info(self, release: dict[str, Any]) -> Any:
        target = str(release["target"])
        if self.tuf.target_info(target) is None:
            # Published after our refresh (the server publishes, then assigns): look once more
            # at a fresh snapshot before calling it an arbitrary target.
            self.tuf.refresh()
        info = self.tuf.require_target(target)
        if self.state.group and self._listed_for(self.state.group, target) is None:
            raise TargetNotTrustedError(f"{target} is withdrawn for group {self.state.group}", where=target,
                                        hint="its rollout was rolled back; refusing the assignment")
        # The assignment is only a pointer; TUF decides what the bytes must be.
        if release.get("sha256") and release["sha256"] != info.hashes.get("sha256"):
            raise TargetMismatchError("the assignment's sha256 differs from the signed TUF metadata",
                                      where=str(release["target"]), hint="refusing the assignment")
        return info

    def _deliver_bundle(self, release: dict[str, Any]) -> dict[str, Any]:
        info = self._signed_info(release)
        got = self.tuf.download(info)
        # Both checks: TUF vouched for the bytes; the release keys must vouch for the bundle.
        vb = verify_bundle(got.path, self.trust)
        if vb.manifest.version != int(release["version"]) or (
                release.get("name") and vb.manifest.name != release["name"]):
            raise TargetMismatchError(f"bundle is {vb.manifest.name} v{vb.manifest.version}, the assignment "
                                      f"says {release.get('name')} v{release['version']}", where=info.path)
        facts = self.installer.install_bundle(got.path)
        return {**facts, "bytes_received": got.bytes_received, "resumed_from": got.resumed_from,
                "delta": False}

    def _deliver_params(self, release: dict[str, Any]) -> dict[str, Any]:
        info = self._signed_info(release)
        name, version, base_v = str(release["name"]), int(release["version"]), release.get("base_version")
        if base_v is not None and int(base_v) == self.installer.active_version():
            dinfo = self.tuf.target_info(delta_target_path(info.path, int(base_v)))
            if dinfo is not None and dinfo.length < info.length:
                got = self.tuf.download(dinfo)
                try:
                    # The store rebuilds the artifact and checks it against the signed hash.
                    facts = self.installer.install_params(name, version, got.path.read_bytes())
                    return {**facts, "bytes_received": got.bytes_received, "delta": True,
                            "full_length": info.length}
                except ParamUpdateError as e:
                    log.warning("delta for v%d refused (%s); fetching the full update", version, e.message)
        got = self.tuf.download(info)
        facts = self.installer.install_params(name, version, got.path.read_bytes())
        return {**facts, "bytes_received": got.bytes_received, "delta": False, "full_length": info.length}

    def _maybe_telemetry(self) -> None:
        now = time.monotonic()
        if now - self._last_telemetry < self.config.telemetry_interval_s and self._last_telemetry:
            return
        snap = self.installer.telemetry()
        self._last_telemetry = now
        if snap:  # the summary fields are what the rollout gates and the dashboard plots read
            self.report("telemetry", True, version=self.installer.active_version(),
                        data={**snap, **gate_summary(snap)})
