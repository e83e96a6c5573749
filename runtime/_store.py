"""The install store: A/B slots, a small journal, atomic activation, rollback.

Layout of ``state_dir``::

    journal.json        the only commit point: which slot is active (os.replace'd)
    slots/a, slots/b    complete, fsynced installs (bundle.edgepack [+ params.epu + patched/*])
    incoming/<id>/      work areas of installs in progress (never loaded)
    lock                flock'ed for the few milliseconds of a commit

An install prepares and health-checks its candidate in ``incoming/`` without
holding any lock, so a stuck install never blocks a newer one. The commit
(under the lock) moves the candidate into the inactive slot and then replaces
``journal.json``; a crash before that replace leaves the old version active,
after it the new one. The journal records each slot's manifest sha256, so a
slot that does not hold exactly what the journal vouches for is never loaded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgepack import EdgepackError, Trust, VerifiedBundle, canonical_bytes, verify_bundle
from edgepack._params import apply_param_update, parse_param_update

from ._backends import is_available
from ._errors import InstallError, ParamUpdateError
from ._fsutil import atomic_write, fsync_dir, read_json, remove_tree, write_json
from ._golden import health_check
from ._model import LoadConfig, Model, choose_artifact, model_from_verified

__all__ = ["InstallResult", "InstallStore", "SlotRecord"]

JOURNAL_SCHEMA = "edgepack.installstore/v1"
SLOTS = ("a", "b")
HISTORY_LIMIT = 50
BUNDLE_FILE, PARAMS_FILE, PATCHED_DIR = "bundle.edgepack", "params.epu", "patched"
#: a full disk, a full quota, or a file-size limit (RLIMIT_FSIZE): all mean "no room for this install"
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class SlotRecord:
    """What the journal vouches a slot holds."""

    slot: str
    name: str
    version: int
    bundle_version: int
    manifest_sha256: str
    params_sha256: str | None = None
    installed_at: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SlotRecord | None:
        return None if not d else cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class InstallResult:
    """The outcome of ``install``/``apply_param_update``/``rollback``. ``reason`` is
    machine-readable: ``{"code": ..., "error": ..., "message": ..., "details": {...}}``."""

    ok: bool
    action: str
    version: int | None
    active_version: int | None
    slot: str | None = None
    reason: dict[str, Any] | None = None
    health: dict[str, Any] | None = None
    rolled_back: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def raise_for_status(self) -> InstallResult:
        """Raises: InstallError (or HealthCheckError) if ``ok`` is False."""
        from ._errors import HealthCheckError

        if not self.ok:
            cls = HealthCheckError if (self.reason or {}).get("code") == "health_check_failed" else InstallError
            raise cls(f"{self.action} refused: {(self.reason or {}).get('message')}", where=str(self.version))
        return self


def _manifest_sha(vb: VerifiedBundle) -> str:
    return hashlib.sha256(canonical_bytes(vb.manifest.to_dict())).hexdigest()


def _reason(code: str, err: BaseException | None = None, message: str | None = None, **details: Any) -> dict[str, Any]:
    return {"code": code, "error": type(err).__name__ if err else None,
            "message": message or (getattr(err, "message", None) or str(err) if err else code), "details": details}


class InstallStore:
    """A device's installed model, with crash-safe A/B installs.

    ``trust`` verifies bundles; ``update_trust`` (default: ``trust``) verifies
    parameter updates, normally the fleet's federated key.
    """

    def __init__(self, state_dir: str | os.PathLike[str], trust: Trust, *, update_trust: Trust | None = None,
                 config: LoadConfig | None = None) -> None:
        self.root = Path(state_dir)
        self.trust, self.update_trust = trust, update_trust or trust
        self.config = config or LoadConfig(warmup_runs=0)
        try:
            for d in (self.root, self.root / "slots", self.root / "incoming"):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InstallError(f"cannot create the state directory: {e.strerror}", where=str(self.root)) from e
        self._journal_path = self.root / "journal.json"

    # ---- journal -----------------------------------------------------------------------
    def journal(self) -> dict[str, Any]:
        """The journal as a dict (empty store: no active slot)."""
        if not self._journal_path.exists():
            return {"schema": JOURNAL_SCHEMA, "active": None, "previous": None, "history": []}
        try:
            doc = read_json(self._journal_path)
        except ValueError as e:
            # Unreachable by crashes (the journal is only ever os.replace'd); only outside damage.
            raise InstallError("journal.json is not valid JSON", where=str(self._journal_path),
                               hint="restore the state directory or re-install") from e
        if doc.get("schema") != JOURNAL_SCHEMA:
            raise InstallError(f"unknown journal schema {doc.get('schema')!r}", where=str(self._journal_path))
        return doc

    def _commit(self, doc: dict[str, Any], event: dict[str, Any]) -> None:
        doc["history"] = (doc.get("history") or [])[-(HISTORY_LIMIT - 1):] + [{"at": _now(), **event}]
        doc["last_result"] = event
        write_json(self._journal_path, doc)

    def _record(self, event: dict[str, Any]) -> None:
        with self._lock():
            self._commit(self.journal(), event)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        # flock is released by the kernel when a holder is SIGKILLed, so it can never stay stuck.
        with open(self.root / "lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def active(self) -> SlotRecord | None:
        """The active slot's record, or None if nothing is installed."""
        return SlotRecord.from_dict(self.journal().get("active"))

    def previous(self) -> SlotRecord | None:
        return SlotRecord.from_dict(self.journal().get("previous"))

    def delivered_sha256(self, rec: SlotRecord) -> str:
        """The sha256 of the file that was delivered for ``rec``'s slot: its parameter update
        (recorded in the journal) if it has one, else the bundle file kept in the slot.

        Raises:
            InstallError: the slot's bundle file cannot be read.
        """
        if rec.params_sha256:
            return rec.params_sha256
        h = hashlib.sha256()
        try:
            with open(self.root / "slots" / rec.slot / BUNDLE_FILE, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as e:
            raise InstallError(f"cannot read slot {rec.slot}'s bundle: {e.strerror}", where=str(self.root)) from e
        return h.hexdigest()

    # ---- loading -----------------------------------------------------------------------
    def _load_dir(self, d: Path, rec: SlotRecord | None, config: LoadConfig) -> tuple[Model, VerifiedBundle]:
        vb = verify_bundle(d / BUNDLE_FILE, self.trust, keep_members=True)
        msha = _manifest_sha(vb)
        if rec is not None and msha != rec.manifest_sha256:
            raise InstallError(f"slot {rec.slot} does not hold what the journal vouches for", where=str(d))
        patched, version = None, None
        if (d / PARAMS_FILE).exists():
            data = (d / PARAMS_FILE).read_bytes()
            if rec is not None and hashlib.sha256(data).hexdigest() != rec.params_sha256:
                raise InstallError(f"slot {rec.slot} params do not match the journal", where=str(d))
            u, _ = parse_param_update(data, self.update_trust)
            if u.model != vb.manifest.name:
                raise ParamUpdateError(f"params are for {u.model!r}, bundle is {vb.manifest.name!r}", where=str(d))
            patched = {}
            for path, a in u.artifacts.items():
                blob = (d / PATCHED_DIR / Path(path).name).read_bytes()
                if hashlib.sha256(blob).hexdigest() != a["result_sha256"]:
                    raise ParamUpdateError(f"patched {path} does not match its signed hash", where=str(d))
                patched[path] = blob
            version = u.version
            chosen = choose_artifact(vb.manifest, config)[0]
            if chosen not in patched:
                raise ParamUpdateError(f"the active parameter update does not cover {chosen}", where=str(d),
                                       hint=f"load one of {sorted(patched)} (LoadConfig(artifact=...))")
        return model_from_verified(vb, config, artifacts=patched, version=version), vb

    def _load_slot(self, rec: SlotRecord, config: LoadConfig) -> Model:
        return self._load_dir(self.root / "slots" / rec.slot, rec, config)[0]

    def load_active(self, config: LoadConfig | None = None, *, allow_fallback: bool = True) -> Model:
        """Verify and load the active version. If it fails to verify or load and
        ``allow_fallback``, roll back to the previous slot (recording why) and load that.

        Raises:
            InstallError: nothing is installed, or no slot verifies and loads.
        """
        config = config or self.config
        rec = self.active()
        if rec is None:
            raise InstallError("nothing is installed", where=str(self.root), hint="call install(bundle) first")
        try:
            return self._load_slot(rec, config)
        except EdgepackError as e:
            if not allow_fallback:
                raise
            res = self.rollback(_reason("load_failed", e, slot=rec.slot, version=rec.version))
            if not res.ok:
                raise InstallError(f"active v{rec.version} does not load ({e}) and rollback failed: "
                                   f"{res.reason and res.reason['message']}", where=str(self.root)) from e
            return self.load_active(config, allow_fallback=False)

    # ---- installing --------------------------------------------------------------------
    def _new_incoming(self) -> Path:
        self._sweep_incoming()
        d = self.root / "incoming" / f"{os.getpid()}-{os.urandom(6).hex()}"
        d.mkdir()
        return d

    def _sweep_incoming(self) -> None:
        """Remove work areas of installs whose process is gone (crashed or killed)."""
        for d in (self.root / "incoming").iterdir():
            pid = d.name.split("-", 1)[0]
            if d.name.startswith(".trash-") or not pid.isdigit() or not _alive(int(pid)):
                shutil.rmtree(d, ignore_errors=True)
        for d in (self.root / "slots").glob(".trash-*"):
            shutil.rmtree(d, ignore_errors=True)

    def _fail(self, action: str, version: int | None, reason: dict[str, Any], work: Path | None,
              health: dict[str, Any] | None = None) -> InstallResult:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        act = self.active()
        res = InstallResult(False, action, version, act.version if act else None, None, reason, health,
                            rolled_back=reason["code"] == "health_check_failed")
        try:
            self._record({"event": "rolled_back" if res.rolled_back else "refused", **res.to_dict()})
        except OSError as e:
            if e.errno not in NO_SPACE_ERRNOS:
                raise
            # the disk is still full: the old journal stays (atomic_write left no temp file) and the
            # result, which the agent reports to the server, still says why
        return res

    def _io_reason(self, e: OSError) -> dict[str, Any]:
        if e.errno in NO_SPACE_ERRNOS:
            free = shutil.disk_usage(self.root).free
            return _reason("no_space", e, message=f"no space left for the install in {self.root} "
                           f"({free} bytes free): {e.strerror}", free_bytes=free)
        return _reason("io_error", e, message=f"cannot write the install: {e.strerror}")

    def _check_candidate(self, action: str, name: str, version: int, work: Path, model: Model,
                         expected: dict[str, Any] | None = None) -> InstallResult | None:
        act = self.active()
        if act is not None and name != act.name:
            return self._fail(action, version, _reason("wrong_model", message=f"store holds {act.name!r}, got {name!r}"), work)
        if act is not None and version <= act.version:
            return self._fail(action, version, _reason(
                "not_newer", message=f"v{version} is not newer than active v{act.version}"), work)
        try:
            report = health_check(model, expected_override=expected)
        except EdgepackError as e:
            return self._fail(action, version, _reason("health_check_failed", e), work)
        if not report.ok:
            bad = [o for o in report.outputs if not o["ok"]]
            return self._fail(action, version, _reason(
                "health_check_failed", message=f"golden outputs differ: {[o['output'] for o in bad]}",
                outputs=bad), work, report.to_dict())
        return None

    def _check_other_artifacts(self, vb: VerifiedBundle, done: str, work: Path) -> InstallResult | None:
        """Health-check every other artifact this device has a backend for, so a later change
        of backend preference can never load an artifact that was not checked."""
        for a in vb.manifest.artifacts:
            if a.path == done or not is_available(a.format):
                continue
            try:
                other = model_from_verified(vb, LoadConfig(artifact=a.path, backends=(a.format,), warmup_runs=0))
                report = health_check(other)
            except EdgepackError as e:
                return self._fail("install", vb.manifest.version, _reason("health_check_failed", e, artifact=a.path),
                                  work)
            if not report.ok:
                return self._fail("install", vb.manifest.version, _reason(
                    "health_check_failed", message=f"{a.path}: golden outputs differ", artifact=a.path,
                    outputs=[o for o in report.outputs if not o["ok"]]), work, report.to_dict())
        return None

    def _activate(self, action: str, work: Path, rec: SlotRecord, health: dict[str, Any] | None) -> InstallResult:
        with self._lock():
            doc = self.journal()
            act = SlotRecord.from_dict(doc.get("active"))
            if act is not None and rec.version <= act.version:
                # a newer install committed while this one was preparing: it wins
                shutil.rmtree(work, ignore_errors=True)
                reason = _reason("superseded", message=f"v{act.version} was activated meanwhile")
                self._commit(doc, {"event": "refused", "action": action, "version": rec.version, "reason": reason})
                return InstallResult(False, action, rec.version, act.version, None, reason)
            target = "b" if act is not None and act.slot == "a" else "a"
            dest = self.root / "slots" / target
            remove_tree(dest)
            os.replace(work, dest)
            fsync_dir(dest.parent)
            new = SlotRecord(target, rec.name, rec.version, rec.bundle_version, rec.manifest_sha256,
                             rec.params_sha256, _now())
            doc.update(active=asdict(new), previous=asdict(act) if act else None)
            res = InstallResult(True, action, rec.version, rec.version, target, None, health)
            try:
                self._commit(doc, {"event": "activated", **res.to_dict()})   # the commit point
            except OSError as e:
                # If the journal's rename happened (only the directory fsync after it failed), it
                # already names the new slot: the activation stands, and the slot must stay. The
                # old active slot is untouched either way, so a power cut that undoes the rename
                # still finds the version the old journal names.
                with contextlib.suppress(OSError, ValueError, InstallError):
                    if self.journal().get("active") == doc["active"]:
                        return res
                remove_tree(dest)  # the journal was not replaced: the old version is still active
                return InstallResult(False, action, rec.version, act.version if act else None, None,
                                     self._io_reason(e))
            return res

    def install(self, bundle_path: str | os.PathLike[str]) -> InstallResult:
        """Install a bundle into the inactive slot and activate it if it passes its health check.

        Never raises for a bad candidate: the result says why (``reason["code"]`` is one of
        ``verification_failed``, ``wrong_model``, ``not_newer``, ``health_check_failed``,
        ``superseded``, ``no_space`` when the disk, quota or file-size limit is full, ``io_error``)
        and the journal records it (unless the disk is too full even for that); the active version
        is untouched and the incomplete copy is removed.

        Raises:
            InstallError: the state directory itself is unusable.
        """
        work = self._new_incoming()
        try:
            dst = work / BUNDLE_FILE
            shutil.copyfile(bundle_path, dst)
            with open(dst, "rb") as f:
                os.fsync(f.fileno())
            model, vb = self._load_dir(work, None, self.config)   # verify the copy we will keep
        except OSError as e:
            return self._fail("install", None, self._io_reason(e), work)
        except EdgepackError as e:
            return self._fail("install", None, _reason("verification_failed", e), work)
        m = vb.manifest
        bad = self._check_candidate("install", m.name, m.version, work, model)
        if bad is not None:
            return bad
        bad = self._check_other_artifacts(vb, model.artifact, work)
        if bad is not None:
            return bad
        fsync_dir(work)
        return self._activate("install", work, SlotRecord("", m.name, m.version, m.version, _manifest_sha(vb)),
                              None)

    def apply_param_update(self, update: bytes) -> InstallResult:
        """Apply a signed parameter update to the active model, as a new slot.

        The update must verify against ``update_trust``, name the active model, have
        ``base_version`` equal to the active version, and rebuild every artifact to its
        signed ``result_sha256``; then it is health-checked like an install.
        Reason codes: ``verification_failed``, ``wrong_model``, ``wrong_base_version``,
        ``param_hash_mismatch``, ``not_newer``, ``health_check_failed``, ``superseded``.

        Raises:
            InstallError: nothing is installed.
        """
        act = self.active()
        if act is None:
            raise InstallError("nothing is installed to update", where=str(self.root), hint="install a bundle first")
        try:
            u, raw = parse_param_update(update, self.update_trust)
        except EdgepackError as e:
            return self._fail("params", None, _reason("verification_failed", e), None)
        if u.model != act.name:
            return self._fail("params", u.version, _reason("wrong_model", message=f"update is for {u.model!r}"), None)
        if u.base_version != act.version:
            return self._fail("params", u.version, _reason(
                "wrong_base_version", message=f"update is against v{u.base_version}; active is v{act.version}",
                base_version=u.base_version, active_version=act.version), None)
        src = self.root / "slots" / act.slot
        try:
            vb = verify_bundle(src / BUNDLE_FILE, self.trust, keep_members=True)
            current = {a.path: vb.member(a.path) for a in vb.manifest.artifacts}
            if (src / PARAMS_FILE).exists():
                for p in (src / PATCHED_DIR).iterdir():
                    current[f"artifacts/{p.name}"] = p.read_bytes()
            rebuilt = apply_param_update(u, raw, current)
        except EdgepackError as e:
            code = "param_hash_mismatch" if type(e).__name__ == "ArtifactHashError" else "wrong_base_version"
            return self._fail("params", u.version, _reason(code, e), None)
        work = self._new_incoming()
        try:
            shutil.copyfile(src / BUNDLE_FILE, work / BUNDLE_FILE)
            (work / PATCHED_DIR).mkdir()
            for path, blob in rebuilt.items():
                atomic_write(work / PATCHED_DIR / Path(path).name, blob)
            atomic_write(work / PARAMS_FILE, update)
        except OSError as e:
            return self._fail("params", u.version, self._io_reason(e), work)
        try:
            model, _ = self._load_dir(work, None, self.config)
        except EdgepackError as e:
            return self._fail("params", u.version, _reason("health_check_failed", e), work)
        expected = _golden_override(u.golden, model)
        bad = self._check_candidate("params", u.model, u.version, work, model, expected)
        if bad is not None:
            return bad
        fsync_dir(work)
        rec = SlotRecord("", u.model, u.version, act.bundle_version, _manifest_sha(vb),
                         hashlib.sha256(update).hexdigest())
        return self._activate("params", work, rec, None)

    def rollback(self, reason: str | dict[str, Any] = "manual") -> InstallResult:
        """Make the previous slot active again, if it still verifies and loads.

        ``reason`` (a string or a machine-readable dict) is recorded in the journal.
        """
        why = reason if isinstance(reason, dict) else _reason("manual", message=str(reason))
        with self._lock():
            doc = self.journal()
            act, prev = SlotRecord.from_dict(doc.get("active")), SlotRecord.from_dict(doc.get("previous"))
            if prev is None:
                res = InstallResult(False, "rollback", None, act.version if act else None, None,
                                    _reason("no_previous", message="there is no previous version to roll back to"))
                self._commit(doc, {"event": "refused", **res.to_dict(), "requested_because": why})
                return res
            try:
                self._load_slot(prev, LoadConfig(warmup_runs=0, backends=self.config.backends))
            except EdgepackError as e:
                res = InstallResult(False, "rollback", prev.version, act.version if act else None, None,
                                    _reason("previous_invalid", e))
                self._commit(doc, {"event": "refused", **res.to_dict(), "requested_because": why})
                return res
            doc.update(active=asdict(prev), previous=asdict(act) if act else None)
            res = InstallResult(True, "rollback", prev.version, prev.version, prev.slot, why, rolled_back=True)
            self._commit(doc, {"event": "rolled_back", **res.to_dict()})
            return res


def _golden_override(golden: dict[str, Any] | None, model: Model) -> dict[str, Any]:
    """Expected outputs for a parameter update: its own signed golden values if it has
    them, else an empty dict (the check then only demands finite outputs of the right shape)."""
    import numpy as np

    fname = model.artifact.rsplit("/", 1)[-1]
    out: dict[str, Any] = {}
    for s in model.io.outputs:
        v = (golden or {}).get(f"{fname}__{s.name}")
        if v is not None:
            out[s.name] = np.asarray(v, dtype=np.float32)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
