"""The device's TUF client: ``tuf.ngclient.Updater`` plus resumable, verified downloads.

The pinned root (version 1, shipped out of band) is the bootstrap on every
refresh; newer roots the device has already verified are read back from its
``root_history`` cache, so root rotations are followed and never undone.
"""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from ._download import DownloadResult, download_resumable
from ._errors import (
    EndlessDataError,
    ServerRefusedError,
    ServerUnreachableError,
    TargetMismatchError,
    TargetNotTrustedError,
    TufVerificationError,
)
from ._http import Auth, UrllibFetcher

__all__ = ["RefreshStats", "TufClient"]


@dataclass(frozen=True)
class RefreshStats:
    """What one refresh cost the device (recorded in telemetry and the benchmark)."""

    seconds: float
    requests: int
    bytes: int


class _CountingFetcher(UrllibFetcher):
    def __init__(self, timeout: float, auth: Auth | None) -> None:
        super().__init__(timeout, auth=auth)
        self.requests = 0
        self.bytes = 0

    def _fetch(self, url: str):  # type: ignore[no-untyped-def]
        self.requests += 1
        for chunk in super()._fetch(url):
            self.bytes += len(chunk)
            yield chunk


def _wrap(e: Exception, what: str) -> Exception:
    """Map python-tuf's exceptions onto edgepack's typed errors."""
    name = type(e).__name__
    if isinstance(e, tuf_exc.DownloadLengthMismatchError):
        return EndlessDataError(f"{what}: {e}", where=what,
                                hint="the server sent more than the signed or configured maximum")
    if isinstance(e, tuf_exc.LengthOrHashMismatchError):
        return TargetMismatchError(f"{what}: {name}: {e}", where=what)
    if isinstance(e, tuf_exc.RepositoryError):
        return TufVerificationError(f"{what}: {name}: {e}", where=what,
                                    hint="refusing the update; the current model keeps serving")
    if isinstance(e, tuf_exc.DownloadHTTPError):
        return ServerRefusedError(f"{what}: HTTP {e.status_code}", status=e.status_code, where=what)
    return ServerUnreachableError(f"{what}: {name}: {e}", where=what)


class TufClient:
    """Refresh TUF metadata from ``server_url`` and fetch verified targets."""

    def __init__(self, state_dir: str | Path, server_url: str, pinned_root: bytes, *,
                 timeout: float = 30.0, config: UpdaterConfig | None = None, auth: Auth | None = None) -> None:
        self.metadata_dir = Path(state_dir) / "tuf"
        self.downloads_dir = Path(state_dir) / "downloads"
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        base = server_url.rstrip("/")
        self.metadata_url = f"{base}/tuf/metadata/"
        self.targets_url = f"{base}/tuf/targets/"
        self.pinned_root = pinned_root
        self.timeout = timeout
        self.config = config or UpdaterConfig()
        self.auth = auth
        self._updater: Updater | None = None

    def refresh(self) -> RefreshStats:
        """Run the TUF client workflow: root, timestamp, snapshot, targets.

        Raises:
            TufVerificationError: rollback, freeze, mix-and-match, bad signatures.
            EndlessDataError: a metadata file exceeded its maximum length.
            ServerUnreachableError / ServerRefusedError: network or HTTP failure.
        """
        fetcher = _CountingFetcher(self.timeout, self.auth)
        t0 = time.perf_counter()
        try:
            updater = Updater(str(self.metadata_dir), self.metadata_url, str(self.downloads_dir),
                              self.targets_url, fetcher, self.config, bootstrap=self.pinned_root)
            updater.refresh()
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as e:
            self._updater = None
            raise _wrap(e, "TUF refresh") from e
        self._updater = updater
        return RefreshStats(time.perf_counter() - t0, fetcher.requests, fetcher.bytes)

    def _need_updater(self) -> Updater:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        return self._updater

    def target_info(self, path: str) -> TargetFile | None:
        """The signed info for ``path``, walking delegations (None if no trusted role lists it).

        Raises:
            TufVerificationError, ServerUnreachableError: as for ``refresh``.
        """
        updater = self._need_updater()
        try:
            return updater.get_targetinfo(path)
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as e:
            raise _wrap(e, f"TUF lookup of {path}") from e

    def require_target(self, path: str) -> TargetFile:
        """Like ``target_info`` but an unknown target is an error (an arbitrary-target attempt).

        Raises:
            TargetNotTrustedError: no trusted role vouches for ``path``.
        """
        info = self.target_info(path)
        if info is None:
            raise TargetNotTrustedError(f"no trusted TUF role lists target {path!r}", where=path,
                                        hint="the assignment names a file the repository never signed")
        return info

    def _consistent_snapshot(self) -> bool:
        # root.json in the metadata dir is the root the Updater verified last.
        root = Metadata.from_bytes((self.metadata_dir / "root.json").read_bytes()).signed
        return bool(root.consistent_snapshot)

    def download(self, info: TargetFile, dest: Path | None = None) -> DownloadResult:
        """Download ``info``'s file (resuming a part file) and check its signed length and hash.

        Raises:
            TargetMismatchError: the complete file's length or sha256 differ (it is deleted).
            EndlessDataError: the server sent more bytes than signed.
            DownloadInterruptedError: the transfer broke off; call again to resume.
        """
        self._need_updater()
        dirname, sep, basename = info.path.rpartition("/")
        digest = info.hashes["sha256"]
        # Consistent snapshots (root says so): the file is served under its hash.
        remote = f"{dirname}{sep}{digest}.{basename}" if self._consistent_snapshot() else info.path
        url = self.targets_url + urllib.parse.quote(remote)
        dest = dest or self.downloads_dir / f"{digest}.{basename}"
        if dest.exists():
            with open(dest, "rb") as f:
                try:
                    info.verify_length_and_hashes(f)
                    return DownloadResult(dest, 0, info.length, None)
                except tuf_exc.LengthOrHashMismatchError:
                    pass
            dest.unlink()
        result = download_resumable(url, dest, info.length, timeout=self.timeout, auth=self.auth)
        with open(dest, "rb") as f:
            try:
                info.verify_length_and_hashes(f)
            except tuf_exc.LengthOrHashMismatchError as e:
                dest.unlink()
                raise TargetMismatchError(f"{info.path} does not match its signed metadata: {e}",
                                          where=info.path, hint="the file was swapped on the server; "
                                          "refusing it") from e
        return result
