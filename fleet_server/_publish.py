"""Delivery of releases to device groups, behind one small interface.

``TufPublisher`` signs every release into its group's delegated TUF role
(``fleet_server._tuf``); ``StoragePublisher`` is the fallback when the instance
has no TUF repository: it serves the same target paths straight from storage
(devices then rely on the bundle signature alone). The HTTP layer
(``_delivery.py``) only sees ``Publisher``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgepack import PathTraversalError, load_signing_key
from runtime.agent._delta import bundle_target_path, params_target_path

from ._errors import ConflictError
from ._storage import Storage, check_key

__all__ = ["ParamsDeliveryUnavailableError", "Publisher", "StoragePublisher", "TargetBlob", "TufPublisher",
           "open_publisher", "publish_release", "release_target", "target_path", "withdraw_release"]

TUF_DIR = "tuf"
_HASHED = re.compile(r"^[0-9a-f]{64}\.(.+)\Z")


def target_path(group: str, name: str, version: int) -> str:
    """The TUF target path of a release bundle in a group (``groups/<group>/<name>-<version>.edgepack``)."""
    return bundle_target_path(group, name, version)  # the device computes the same path


def _bundle_target(group: str, name: str, version: int) -> str:
    return target_path(group, name, version)


def _params_target(group: str, name: str, version: int) -> str:
    # Parameter updates are signed by the federated role, which TUF confines to params/:
    # one target for every group, unlike bundles (one per group role).
    return params_target_path(name, version)


#: release kind -> its TUF target path in a group
TARGET_FOR: dict[str, Callable[[str, str, int], str]] = {"bundle": _bundle_target, "params": _params_target}


def release_target(group: str, release: Any) -> str:
    """The TUF target path a device of ``group`` is assigned for ``release`` (a ``Release`` row)."""
    return TARGET_FOR[release.kind](group, release.name, release.version)


class ParamsDeliveryUnavailableError(ConflictError):
    """Parameter updates are delivered only through the TUF repository (federated role)."""


def publish_release(publisher: Publisher, group: str, release: Any) -> str:
    """Make ``release`` (a ``Release`` row) downloadable by ``group``; return its target path.

    Raises:
        ParamsDeliveryUnavailableError: a parameter update on a fleet without TUF.
        PathTraversalError, TufRepositoryError: from the publisher.
    """
    if release.kind == "params":
        delta = (release.manifest or {}).get("delivery", {}).get("delta")
        return publisher.publish_params(
            release.name, release.version, release.storage_key, release.sha256,
            (int(delta["base_version"]), delta["storage_key"], delta["sha256"]) if delta else None, group=group)
    return publisher.publish(group, release.name, release.version, release.storage_key, release.sha256)


def withdraw_release(publisher: Publisher, group: str, release: Any) -> bool:
    """Withdraw ``release`` (a ``Release`` row) from ``group``'s signed metadata; True if something changed.

    A rollout that rolls back calls this: a device that already runs the release follows the
    rollback only once TUF stops vouching for it (docs/delivery.md, "Fleet rollback").

    Raises:
        PathTraversalError, TufRepositoryError: from the publisher.
    """
    return publisher.withdraw(group, release_target(group, release))


@dataclass(frozen=True)
class TargetBlob:
    """One downloadable target: its size, a strong ETag, and a ranged reader."""

    size: int
    etag: str
    read_range: Callable[[int, int | None], Iterator[bytes]]


class Publisher(Protocol):
    kind: str

    def ensure_group(self, group: str) -> None: ...

    def publish(self, group: str, name: str, version: int, storage_key: str, sha256: str) -> str:
        """Make the release downloadable by ``group``; return its target path."""

    def publish_params(self, name: str, version: int, storage_key: str, sha256: str,
                       delta: tuple[int, str, str] | None, group: str | None = None) -> str:
        """Publish a parameter update (and its delta: base version, storage key, sha256) for ``group``
        (clearing an earlier withdrawal for it); return its target."""

    def withdraw(self, group: str, target: str) -> bool:
        """Stop vouching for ``target`` to ``group``'s devices; return False if it was not vouched for."""

    def metadata(self, filename: str) -> bytes:
        """Raises FileNotFoundError when there is no such file (or no TUF at all)."""

    def target(self, url_path: str) -> TargetBlob:
        """Raises FileNotFoundError / PathTraversalError."""

    def refresh(self, now: Any = None) -> list[str]:
        """Re-sign online metadata that is close to expiry; return the roles re-signed."""


def _file_blob(path: Path, etag: str) -> TargetBlob:
    def read(start: int, end: int | None) -> Iterator[bytes]:
        with open(path, "rb") as f:
            f.seek(start)
            left = (end - start + 1) if end is not None else None
            while left is None or left > 0:
                chunk = f.read(65536 if left is None else min(65536, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk
    return TargetBlob(path.stat().st_size, etag, read)


class StoragePublisher:
    """No TUF: serve ``groups/<group>/[<sha256>.]<name>-<version>.edgepack`` from storage."""

    kind = "storage"

    def __init__(self, storage: Storage, lookup: Callable[[str, str], tuple[str, str] | None]) -> None:
        # lookup(group, "<name>-<version>.edgepack") -> (storage_key, sha256) of a release published to the group
        self.storage, self._lookup = storage, lookup

    def ensure_group(self, group: str) -> None:
        return None

    def publish(self, group: str, name: str, version: int, storage_key: str, sha256: str) -> str:
        return target_path(group, name, version)

    def publish_params(self, name: str, version: int, storage_key: str, sha256: str,
                       delta: tuple[int, str, str] | None, group: str | None = None) -> str:
        raise ParamsDeliveryUnavailableError(
            "this fleet has no TUF repository, so it cannot deliver parameter updates",
            where="release", hint="parameter updates are signed by the federated TUF role: create the fleet with "
                                  "`edgepack fleet init --root-key ...` so it has a TUF repository")

    def withdraw(self, group: str, target: str) -> bool:
        # Nothing is signed, so there is nothing a device could check a withdrawal against: on a
        # fleet without TUF a device never goes below its active version (docs/delivery.md).
        return False

    def metadata(self, filename: str) -> bytes:
        raise FileNotFoundError(f"this fleet has no TUF repository ({filename})")

    def target(self, url_path: str) -> TargetBlob:
        parts = url_path.split("/")
        if len(parts) != 3 or parts[0] != "groups":
            raise FileNotFoundError(url_path)
        check_key(url_path)
        base = parts[2]
        m = _HASHED.match(base)
        found = self._lookup(parts[1], m.group(1) if m else base)
        if found is None or (m and not base.startswith(found[1])):
            raise FileNotFoundError(url_path)
        key, sha = found
        return TargetBlob(self.storage.size(key), f'"{sha}"', lambda s, e: self.storage.read_range(key, s, e))

    def refresh(self, now: Any = None) -> list[str]:
        return []


class TufPublisher:
    """Publish through ``fleet_server._tuf.TufRepository`` (python-tuf metadata)."""

    kind = "tuf"

    def __init__(self, repo: Any, storage: Storage) -> None:
        self.repo, self.storage = repo, storage

    def ensure_group(self, group: str) -> None:
        self.repo.add_group(group)

    def publish(self, group: str, name: str, version: int, storage_key: str, sha256: str) -> str:
        path = target_path(group, name, version)
        if path in self.repo.targets_for(group):
            return path
        data = b"".join(self.storage.read_range(storage_key))
        if hashlib.sha256(data).hexdigest() != sha256:
            raise PathTraversalError(f"stored release {storage_key} does not match its recorded sha256",
                                     where=storage_key, hint="the artifact store was modified; re-upload")
        self.repo.add_group(group)
        self.repo.publish_target(group, path.rsplit("/", 1)[1], data, {"name": name, "version": version})
        return path

    def _read_checked(self, storage_key: str, sha256: str) -> bytes:
        data = b"".join(self.storage.read_range(storage_key))
        if hashlib.sha256(data).hexdigest() != sha256:
            raise PathTraversalError(f"stored artifact {storage_key} does not match its recorded sha256",
                                     where=storage_key, hint="the artifact store was modified; re-upload")
        return data

    def publish_params(self, name: str, version: int, storage_key: str, sha256: str,
                       delta: tuple[int, str, str] | None, group: str | None = None) -> str:
        path = params_target_path(name, version)
        if path in self.repo.params_targets():
            # a second rollout (another group, or this group again after a rollback): already signed
            if group is not None:
                self.repo.set_params_withdrawn(path, group, False)
            return path
        data = self._read_checked(storage_key, sha256)
        d = (delta[0], self._read_checked(delta[1], delta[2])) if delta else None
        self.repo.publish_params(name, version, data, delta=d, custom={"name": name, "version": version})
        return path

    def withdraw(self, group: str, target: str) -> bool:
        if target.startswith("params/"):
            if target not in self.repo.params_targets():
                return False
            return bool(self.repo.set_params_withdrawn(target, group, True))
        return bool(self.repo.withdraw_target(group, target.rsplit("/", 1)[1]))

    def metadata(self, filename: str) -> bytes:
        return self.repo.metadata_bytes(filename)

    def target(self, url_path: str) -> TargetBlob:
        path = self.repo.target_file(url_path)
        m = _HASHED.match(path.name)
        etag = f'"{m.group(0)[:64]}"' if m else f'"{hashlib.sha256(path.read_bytes()).hexdigest()}"'
        return _file_blob(path, etag)

    def refresh(self, now: Any = None) -> list[str]:
        return list(self.repo.refresh_online(now=now))


def open_publisher(instance_dir: Path, storage: Storage,
                   lookup: Callable[[str, str], tuple[str, str] | None]) -> Publisher:
    """The instance's TUF publisher if ``INSTANCE/tuf`` holds a repository, else storage-only delivery.

    Raises:
        KeyFileError: the repository exists but its online keys cannot be read.
    """
    tuf_dir = instance_dir / TUF_DIR
    if not (tuf_dir / "repo" / "metadata" / "root.json").exists():
        return StoragePublisher(storage, lookup)
    from ._tuf import TufRepository  # lazy: python-tuf is only needed when the fleet uses it

    repo = TufRepository(tuf_dir / "repo", load_signing_key(tuf_dir / "online.key"),
                         load_signing_key(tuf_dir / "federated.key"))
    return TufPublisher(repo, storage)


def create_tuf(instance_dir: Path, root_key_paths: list[Path], threshold: int, groups: list[str]) -> Path:
    """Create the instance's TUF repository with fresh online and federated keys.

    The root keys sign root v1 here and are not kept; ``INSTANCE/tuf/repo/metadata/1.root.json``
    is what devices pin.

    Raises:
        KeyFileError, UsageError, TufRepositoryError: from key loading or repository creation.
    """
    from edgepack import generate_key, save_key_pair

    from ._tuf import TufRepository

    tuf_dir = instance_dir / TUF_DIR
    roots = [load_signing_key(p) for p in root_key_paths]
    online, federated = generate_key(), generate_key()
    save_key_pair(online, tuf_dir, "online")
    save_key_pair(federated, tuf_dir, "federated")
    TufRepository.create(tuf_dir / "repo", roots, threshold, online, federated, groups=groups or ["default"])
    return tuf_dir / "repo" / "metadata" / "1.root.json"
