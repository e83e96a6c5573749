"""The fleet server's TUF repository (python-tuf ``tuf.api.metadata``).

Who signs what (ARCHITECTURE, trust model):

- ``root``: offline keys with a threshold. They are passed to ``create`` (and
  to ``_tuf_root.rotate_root``) and never stored by the server.
- ``targets``, ``snapshot``, ``timestamp`` and the per-group roles: the online
  key, so the server can publish releases and keep metadata fresh by itself.
  A stolen online key still cannot ship a model: every bundle must also carry
  release-key signatures, which devices check against their release trust file.
- ``federated``: the online federated key, delegated by ``targets`` for
  ``params/*/*`` only. Devices never consult it for any other path.

Layout under ``directory``: ``metadata/N.ROLE.json`` for every version written
(consistent snapshots, so a device mid-refresh never mixes versions),
``metadata/ROLE.json`` for the latest, ``metadata/timestamp.json``, and
``targets/DIR/SHA256.NAME`` for the files. Writes go target file -> delegated
role -> snapshot -> timestamp, each atomic, so the timestamp always points at a
complete set.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from edgepack import PathTraversalError, SigningKey, UsageError
from runtime.agent._delta import delta_target_path, params_target_path

from ._tuf_files import TufRepositoryError, atomic_write, check_name, locked
from ._tuf_signer import EdgepackSigner, tuf_key

__all__ = ["FEDERATED_ROLE", "ParamsPublication", "TufConfig", "TufRepository", "group_role"]

FEDERATED_ROLE = "federated"
_TOP = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
_META_FILE = re.compile(r"^(?:(\d{1,10})\.)?([A-Za-z0-9][A-Za-z0-9_.-]{0,127})\.json\Z")


def group_role(group: str) -> str:
    """The TUF role name that holds ``group``'s targets."""
    return f"group-{check_name(group, 'group')}"


def _at(now: dt.datetime | None) -> dt.datetime:
    # TUF expiry strings have whole seconds; python-tuf truncates, so do it up front.
    return (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)


@dataclass(frozen=True)
class TufConfig:
    """Metadata lifetimes, and when the online roles are re-signed.

    A role is re-signed once less than ``resign_fraction`` of its lifetime is
    left, so with the default one-day timestamp and an hourly ``refresh_online``
    timer there are always about eleven hours of slack (tufup #36: timestamps
    that expire because nobody re-signs them).
    """

    root_lifetime: dt.timedelta = dt.timedelta(days=365)
    targets_lifetime: dt.timedelta = dt.timedelta(days=30)
    snapshot_lifetime: dt.timedelta = dt.timedelta(days=7)
    timestamp_lifetime: dt.timedelta = dt.timedelta(days=1)
    resign_fraction: float = 0.5

    def lifetime(self, role: str) -> dt.timedelta:
        return {Root.type: self.root_lifetime, Snapshot.type: self.snapshot_lifetime,
                Timestamp.type: self.timestamp_lifetime}.get(role, self.targets_lifetime)


@dataclass(frozen=True)
class ParamsPublication:
    """What ``publish_params`` wrote: the full target, and the delta if it was smaller."""

    target: str
    sha256: str
    length: int
    delta_target: str | None
    delta_length: int | None


class TufRepository:
    """Server-side TUF metadata and target files for one fleet.

    Safe to use from several processes: every change holds a file lock and
    re-reads the current metadata from disk first.
    """

    def __init__(self, directory: str | os.PathLike[str], online_key: SigningKey,
                 federated_key: SigningKey, config: TufConfig | None = None) -> None:
        self.dir = Path(directory)
        self.metadata_dir = self.dir / "metadata"
        self.targets_dir = self.dir / "targets"
        self.config = config or TufConfig()
        self._online = EdgepackSigner(online_key)
        self._federated = EdgepackSigner(federated_key)

    # ---- creation ---------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str | os.PathLike[str], root_keys: Sequence[SigningKey], root_threshold: int,
               online_key: SigningKey, federated_key: SigningKey, *, groups: Iterable[str] = ("default",),
               config: TufConfig | None = None, now: dt.datetime | None = None) -> TufRepository:
        """Create a new repository: root v1 signed by ``root_threshold`` of ``root_keys``.

        The root keys are used here and dropped; ship ``metadata/1.root.json`` to
        devices out of band (they pin it).

        Raises:
            UsageError: bad threshold, or the online and root keys overlap.
            TufRepositoryError: ``directory`` already holds a repository.
        """
        if not 1 <= root_threshold <= len(root_keys):
            raise UsageError(f"root threshold {root_threshold} needs 1..{len(root_keys)} root keys",
                             hint="pass at least as many root keys as the threshold")
        root_ids = {k.keyid for k in root_keys}
        if online_key.keyid in root_ids or federated_key.keyid in root_ids:
            raise UsageError("an online key is also a root key", hint="root keys must stay offline")
        repo = cls(directory, online_key, federated_key, config)
        if (repo.metadata_dir / "root.json").exists():
            raise TufRepositoryError("a TUF repository already exists here", where=str(repo.dir),
                                     hint="open it with TufRepository(dir, online_key, federated_key)")
        now = _at(now)
        repo.dir.mkdir(parents=True, exist_ok=True)
        with locked(repo.dir):
            root = Root(expires=now + repo.config.root_lifetime, consistent_snapshot=True)
            for k in root_keys:
                root.add_key(tuf_key(k.public), Root.type)
            root.roles[Root.type].threshold = root_threshold
            for role in (Targets.type, Snapshot.type, Timestamp.type):
                root.add_key(repo._online.public_key, role)
            root_md = Metadata(root)
            for k in root_keys:
                root_md.sign(EdgepackSigner(k), append=True)
            repo._write(Root.type, root_md)

            fed = DelegatedRole(FEDERATED_ROLE, [repo._federated.keyid], 1, True, paths=["params/*/*"])
            targets = Targets(expires=now + repo.config.targets_lifetime,
                              delegations=Delegations({repo._federated.keyid: repo._federated.public_key},
                                                      roles={FEDERATED_ROLE: fed}))
            changed = [repo._sign_write(Targets.type, Metadata(targets)),
                       repo._sign_write(FEDERATED_ROLE, Metadata(Targets(expires=now + repo.config.targets_lifetime)))]
            repo._snapshot_and_timestamp(changed, now, force=True)
        for g in groups:
            repo.add_group(g, now=now)
        return repo

    # ---- reading ----------------------------------------------------------------------------
    def _path_for(self, role: str, version: int | None = None) -> Path:
        name = f"{role}.json" if version is None else f"{version}.{role}.json"
        return self.metadata_dir / name

    def _open(self, role: str) -> Metadata[Any]:
        try:
            return Metadata.from_bytes(self._path_for(role).read_bytes())
        except FileNotFoundError:
            raise TufRepositoryError(f"no {role} metadata in the repository", where=str(self.metadata_dir),
                                     hint="create the repository with TufRepository.create") from None

    def metadata_bytes(self, filename: str) -> bytes:
        """The bytes of one metadata file as served at ``/tuf/metadata/<filename>``.

        Raises:
            PathTraversalError: ``filename`` is not ``[N.]ROLE.json``.
            FileNotFoundError: no such file (serve 404: clients probe for ``N+1.root.json``).
        """
        if not isinstance(filename, str) or not _META_FILE.match(filename) or ".." in filename:
            raise PathTraversalError(f"{filename!r} is not a metadata file name", where="metadata",
                                     hint="ask for ROLE.json or VERSION.ROLE.json")
        return (self.metadata_dir / filename).read_bytes()

    def target_file(self, url_path: str) -> Path:
        """The local file served at ``/tuf/targets/<url_path>`` (hash-prefixed name).

        Raises:
            PathTraversalError: ``url_path`` has an unsafe segment.
            FileNotFoundError: no such target.
        """
        parts = url_path.split("/") if isinstance(url_path, str) else []
        if not parts or len(parts) > 4:
            raise PathTraversalError(f"{url_path!r} is not a target path", where="targets")
        for p in parts:
            check_name(p, "target path segment")
        path = self.targets_dir.joinpath(*parts)
        if not path.is_file():
            raise FileNotFoundError(url_path)
        return path

    def root_bytes(self, version: int = 1) -> bytes:
        """The root a device pins (version 1 unless it follows a rotation)."""
        return self.metadata_bytes(f"{int(version)}.root.json")

    def targets_for(self, group: str) -> dict[str, TargetFile]:
        """The targets currently published for ``group``."""
        return dict(self._open(group_role(group)).signed.targets)

    def params_targets(self) -> dict[str, TargetFile]:
        """The parameter-update targets (full and delta) currently signed by the federated role."""
        return dict(self._open(FEDERATED_ROLE).signed.targets)

    def status(self, now: dt.datetime | None = None) -> dict[str, dict[str, Any]]:
        """Version and expiry of every role, for the dashboard and alerts.

        ``root`` cannot be re-signed online: ``expires_in_s`` below a few weeks
        for it means the root key holders must sign a new root.
        """
        now = _at(now)
        out: dict[str, dict[str, Any]] = {}
        for role in self._roles():
            s = self._open(role).signed
            out[role] = {"version": s.version, "expires": s.expires.isoformat(),
                         "expires_in_s": int((s.expires - now).total_seconds())}
        return out

    def _roles(self) -> list[str]:
        targets = self._open(Targets.type).signed
        delegated = list(targets.delegations.roles) if targets.delegations and targets.delegations.roles else []
        return [*_TOP, *delegated]

    # ---- writing ----------------------------------------------------------------------------
    def _write(self, role: str, md: Metadata[Any]) -> None:
        data = md.to_bytes()
        if role != Timestamp.type:  # the timestamp is never fetched by version (TUF 5.2)
            atomic_write(self._path_for(role, md.signed.version), data)
        atomic_write(self._path_for(role), data)

    def _signer_for(self, role: str) -> EdgepackSigner:
        return self._federated if role == FEDERATED_ROLE else self._online

    def _sign_write(self, role: str, md: Metadata[Any]) -> tuple[str, Metadata[Any]]:
        md.sign(self._signer_for(role))
        self._write(role, md)
        return role, md

    def _bump(self, md: Metadata[Any], role: str, now: dt.datetime) -> Metadata[Any]:
        md.signed.version += 1
        md.signed.expires = now + self.config.lifetime(role)
        return md

    def _snapshot_and_timestamp(self, changed: Sequence[tuple[str, Metadata[Any]]], now: dt.datetime,
                                force: bool = False) -> None:
        try:
            snap_md: Metadata[Snapshot] = self._bump(self._open(Snapshot.type), Snapshot.type, now)
        except TufRepositoryError:
            snap_md = Metadata(Snapshot(expires=now + self.config.snapshot_lifetime))
        if not changed and not force:
            return
        for role, md in changed:
            length = self._path_for(role, md.signed.version).stat().st_size
            snap_md.signed.meta[f"{role}.json"] = MetaFile(version=md.signed.version, length=length)
        self._sign_write(Snapshot.type, snap_md)
        self._timestamp(now)

    def _timestamp(self, now: dt.datetime) -> None:
        # Hash the bytes on disk, not a re-serialization: those are what devices download.
        snap_bytes = self._path_for(Snapshot.type).read_bytes()
        version = Metadata.from_bytes(snap_bytes).signed.version
        info = MetaFile.from_data(version, snap_bytes, ["sha256"])
        try:
            ts_md: Metadata[Timestamp] = self._bump(self._open(Timestamp.type), Timestamp.type, now)
            ts_md.signed.snapshot_meta = info
        except TufRepositoryError:
            ts_md = Metadata(Timestamp(expires=now + self.config.timestamp_lifetime, snapshot_meta=info))
        self._sign_write(Timestamp.type, ts_md)

    def add_group(self, group: str, *, now: dt.datetime | None = None) -> str:
        """Delegate ``groups/<group>/*`` to a new role signed by the online key; return its name.

        Adding a group that exists is a no-op.

        Raises:
            PathTraversalError: ``group`` is not a safe name.
        """
        role = group_role(group)
        now = _at(now)
        with locked(self.dir):
            targets_md: Metadata[Targets] = self._open(Targets.type)
            delegations = targets_md.signed.delegations
            assert delegations is not None and delegations.roles is not None
            if role in delegations.roles:
                return role
            delegations.roles[role] = DelegatedRole(role, [], 1, True, paths=[f"groups/{group}/*"])
            targets_md.signed.add_key(self._online.public_key, role)
            changed = [self._sign_write(Targets.type, self._bump(targets_md, Targets.type, now)),
                       self._sign_write(role, Metadata(Targets(expires=now + self.config.targets_lifetime)))]
            self._snapshot_and_timestamp(changed, now)
        return role

    def _store_target(self, tuf_path: str, data: bytes, custom: Mapping[str, Any] | None) -> TargetFile:
        info = TargetFile.from_data(tuf_path, data, ["sha256"])
        if custom:
            info.unrecognized_fields["custom"] = dict(custom)
        dirname, _, base = tuf_path.rpartition("/")
        atomic_write(self.targets_dir / dirname / f"{info.hashes['sha256']}.{base}", data)
        return info

    def _add_targets(self, role: str, infos: Sequence[TargetFile], now: dt.datetime) -> None:
        md: Metadata[Targets] = self._open(role)
        for info in infos:
            md.signed.targets[info.path] = info
        self._snapshot_and_timestamp([self._sign_write(role, self._bump(md, role, now))], now)

    def publish_target(self, group: str, name: str, data: bytes | os.PathLike[str],
                       custom: Mapping[str, Any] | None = None, *, now: dt.datetime | None = None) -> TargetFile:
        """Publish a file (a bundle) to ``group`` as ``groups/<group>/<name>``.

        Publishing the same name again replaces it (a new role version).

        Raises:
            PathTraversalError: unsafe ``group`` or ``name``.
            TufRepositoryError: ``group`` has no role yet (call ``add_group``).
        """
        role, name = group_role(group), check_name(name, "target name")
        payload = data if isinstance(data, bytes) else Path(data).read_bytes()
        now = _at(now)
        with locked(self.dir):
            if not self._path_for(role).exists():
                raise TufRepositoryError(f"group {group!r} has no TUF role", where=role,
                                         hint="call add_group(group) first")
            info = self._store_target(f"groups/{group}/{name}", payload, custom)
            self._add_targets(role, [info], now)
        return info

    def publish_params(self, model: str, version: int, data: bytes, *, delta: tuple[int, bytes] | None = None,
                       custom: Mapping[str, Any] | None = None, now: dt.datetime | None = None) -> ParamsPublication:
        """Publish a parameter update (an ``.epu`` file), signed by the federated key.

        The full file goes to ``params/<model>/<model>-<version>.epu``. ``delta`` is
        (base version, the same update encoded against that base); it is published
        next to the full file only if it is smaller, so devices never pay more.

        Raises:
            PathTraversalError: unsafe ``model``.
        """
        check_name(model, "model")
        now = _at(now)
        full = params_target_path(model, version)
        with locked(self.dir):
            infos = [self._store_target(full, data, custom)]
            if delta is not None and len(delta[1]) < len(data):
                infos.append(self._store_target(delta_target_path(full, delta[0]), delta[1], custom))
            self._add_targets(FEDERATED_ROLE, infos, now)
        d = infos[1] if len(infos) > 1 else None
        return ParamsPublication(full, infos[0].hashes["sha256"], infos[0].length,
                                 d.path if d else None, d.length if d else None)

    def withdraw_target(self, group: str, name: str, *, now: dt.datetime | None = None) -> bool:
        """Remove ``groups/<group>/<name>`` from the group's role; return False if it was not listed.

        This is how a fleet rollback reaches devices that already run the release: the
        re-signed role (and its snapshot and timestamp) no longer vouches for it, which a
        network attacker cannot fake (TUF never lets a device go back to older metadata).
        The file itself stays on disk, so older consistent-snapshot versions stay whole.

        Raises:
            PathTraversalError: unsafe ``group`` or ``name``.
            TufRepositoryError: ``group`` has no role.
        """
        role, name = group_role(group), check_name(name, "target name")
        now = _at(now)
        with locked(self.dir):
            md: Metadata[Targets] = self._open(role)
            if md.signed.targets.pop(f"groups/{group}/{name}", None) is None:
                return False
            self._snapshot_and_timestamp([self._sign_write(role, self._bump(md, role, now))], now)
        return True

    def set_params_withdrawn(self, target: str, group: str, withdrawn: bool, *,
                             now: dt.datetime | None = None) -> bool:
        """Mark the parameter update ``target`` (and its deltas) withdrawn for ``group``, or not.

        A ``params/`` target is one file for every group (the federated role is not per
        group), so it is not removed: its signed ``custom.withdrawn_groups`` lists the
        groups whose rollout of it was rolled back, and devices of those groups treat it
        as unlisted. Publishing it to the group again clears the mark. Returns False
        when nothing changed (nothing is re-signed then).

        Raises:
            PathTraversalError: unsafe ``group``.
            TufRepositoryError: ``target`` is not a published parameter update.
        """
        check_name(group, "group")
        stem = target.removesuffix(".epu")
        now = _at(now)
        with locked(self.dir):
            md: Metadata[Targets] = self._open(FEDERATED_ROLE)
            if target not in md.signed.targets:
                raise TufRepositoryError(f"{target!r} is not a published parameter update", where=FEDERATED_ROLE)
            changed = False
            for path, info in md.signed.targets.items():
                if path != target and not (path.startswith(f"{stem}.from-") and path.endswith(".epu")):
                    continue
                custom = dict(info.unrecognized_fields.get("custom") or {})
                groups = set(custom.get("withdrawn_groups") or [])
                if (group in groups) == withdrawn:
                    continue
                groups = groups | {group} if withdrawn else groups - {group}
                custom["withdrawn_groups"] = sorted(groups)
                if not groups:
                    del custom["withdrawn_groups"]
                info.unrecognized_fields["custom"] = custom
                changed = True
            if changed:
                self._snapshot_and_timestamp(
                    [self._sign_write(FEDERATED_ROLE, self._bump(md, FEDERATED_ROLE, now))], now)
        return changed

    def refresh_online(self, now: dt.datetime | None = None) -> list[str]:
        """Re-sign every online role that is past ``resign_fraction`` of its lifetime.

        Call it on a timer and after every publish. Returns the roles re-signed.
        """
        now = _at(now)
        with locked(self.dir):
            def due(role: str, md: Metadata[Any]) -> bool:
                left = md.signed.expires - now
                return left < self.config.lifetime(role) * self.config.resign_fraction

            changed = []
            for role in self._roles():
                if role in (Root.type, Snapshot.type, Timestamp.type):
                    continue
                md = self._open(role)
                if due(role, md):
                    changed.append(self._sign_write(role, self._bump(md, role, now)))
            snap = self._open(Snapshot.type)
            if changed or due(Snapshot.type, snap):
                self._snapshot_and_timestamp(changed, now, force=True)
                return [r for r, _ in changed] + [Snapshot.type, Timestamp.type]
            if due(Timestamp.type, self._open(Timestamp.type)):
                self._timestamp(now)
                return [Timestamp.type]
            return []
