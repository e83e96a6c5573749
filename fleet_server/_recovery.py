"""Start-up checks of the server's own state, run once by ``edgepack fleet serve``
before any worker answers a request, and the online backup they point to.

* **WAL scan** (before anything opens the database): SQLite replays its
  write-ahead log only up to the first frame whose checksum fails and silently
  drops the rest, so a damaged frame in the middle would make the server serve
  an older database as if nothing happened. ``scan_wal`` walks the frames
  (format: sqlite.org/fileformat2.html#walformat) and reports committed
  transactions that sit *after* a damaged frame of the same generation. A
  damaged or partial *last* frame is what a crash mid-append leaves (SQLite
  writes a frame's header and its page in two writes), so that alone is not
  damage: the transaction was never acknowledged.
* **Page check**: ``PRAGMA integrity_check`` (or ``quick_check``) on the database.
* **Temp sweep**: uploads spooled to ``INSTANCE/tmp`` and storage temp files left
  by a killed server are deleted (no request can be using them yet), and so are
  stored bundles whose release row never committed (SQLite only).

A failed check raises ``CorruptStateError`` (exit 13): restore the latest
``edgepack fleet backup`` (docs/fleet.md, Recovery).
"""

from __future__ import annotations

import os
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack import ConfigError, CorruptStateError
from edgepack._atomic import fsync_dir

__all__ = ["WalScan", "backup_sqlite", "check_sqlite", "scan_wal", "sweep_orphan_bundles", "sweep_temp"]

_WAL_MAGIC = (0x377F0682, 0x377F0683)
_HEADER, _FRAME_HEADER = 32, 24
CHECKS = ("integrity", "quick", "off")


@dataclass(frozen=True)
class WalScan:
    """What SQLite would replay from a WAL, and what it would drop."""

    frames: int               #: whole frames in the file
    valid_frames: int         #: frames SQLite replays (up to the last commit before the first bad frame)
    damaged_frame: int | None  #: 1-based index of the frame where replay stops because of damage
    lost_commits: int         #: commit frames of this generation after it (SQLite drops them silently)

    @property
    def damaged(self) -> bool:
        return self.lost_commits > 0


def _checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def scan_wal(wal: Path) -> WalScan:
    """Walk a WAL file's frames and checksums without opening the database.

    Raises:
        CorruptStateError: the WAL header itself is damaged while frames follow it.
    """
    data = wal.read_bytes() if wal.exists() else b""
    if len(data) < _HEADER:
        return WalScan(0, 0, None, 0)
    magic, _version, page_size, _seq, salt1, salt2, c1, c2 = struct.unpack(">8I", data[:_HEADER])
    frame_size = _FRAME_HEADER + page_size
    frames = (len(data) - _HEADER) // frame_size if page_size else 0
    big = magic == 0x377F0683
    if magic not in _WAL_MAGIC or _checksum(data[:24], 0, 0, big) != (c1, c2):
        if frames:
            raise CorruptStateError(f"the WAL header of {wal.name} is damaged ({frames} frame(s) follow it)",
                                    where=str(wal), hint="restore the latest 'edgepack fleet backup' "
                                                         "(docs/fleet.md, Recovery)")
        return WalScan(0, 0, None, 0)
    s0, s1 = c1, c2
    end = None  # the first frame SQLite will not replay
    bad_checksum = False
    last_commit, lost = 0, 0
    for i in range(frames):
        off = _HEADER + i * frame_size
        hdr = data[off:off + _FRAME_HEADER]
        _pgno, commit_size, fs1, fs2, fc1, fc2 = struct.unpack(">6I", hdr)
        current = (fs1, fs2) == (salt1, salt2)
        if end is not None:
            # after a checkpoint reset the tail holds frames of older generations (other salts);
            # a commit frame of *this* generation here is a transaction SQLite will drop
            lost += current and commit_size != 0
            continue
        if current:
            s0, s1 = _checksum(hdr[:8] + data[off + _FRAME_HEADER:off + frame_size], s0, s1, big)
            if (s0, s1) == (fc1, fc2):
                if commit_size:
                    last_commit = i + 1
                continue
            bad_checksum = True
        end = i + 1
    damaged = end if (lost or bad_checksum) else None
    return WalScan(frames, last_commit, damaged, lost)


def check_sqlite(db_path: Path, check: str = "integrity", *, accept_wal_loss: bool = False) -> WalScan:
    """Refuse a damaged SQLite database before it is served; returns the WAL scan.

    Raises:
        CorruptStateError: committed transactions lie after a damaged WAL frame, or the WAL header
            is damaged while frames follow it (both unless ``accept_wal_loss``), or the database
            fails ``PRAGMA integrity_check``/``quick_check``.
        ConfigError: ``check`` is not one of ``integrity``, ``quick``, ``off``.
    """
    if check not in CHECKS:
        raise ConfigError(f"sqlite_startup_check must be one of {CHECKS}, got {check!r}",
                          where="sqlite_startup_check")
    hint = "restore the latest 'edgepack fleet backup' (docs/fleet.md, Recovery)"
    wal = db_path.with_name(db_path.name + "-wal")
    try:
        scan = scan_wal(wal)
    except CorruptStateError:
        if not accept_wal_loss:
            raise
        scan = WalScan(0, 0, None, 0)  # SQLite ignores a WAL whose header is damaged
    if scan.damaged and not accept_wal_loss:
        raise CorruptStateError(
            f"{wal.name} is damaged at frame {scan.damaged_frame} of {scan.frames}: SQLite would silently drop "
            f"{scan.lost_commits} committed transaction(s) after it", where=str(wal),
            hint=hint + ", or start with --accept-wal-loss to keep the database as of frame "
                        f"{scan.valid_frames}")
    if check == "off" or not db_path.exists():
        return scan
    pragma = "integrity_check" if check == "integrity" else "quick_check"
    try:
        con = sqlite3.connect(db_path, timeout=30)
        try:
            rows = [r[0] for r in con.execute(f"PRAGMA {pragma}(20)")]
        finally:
            con.close()
    except sqlite3.DatabaseError as e:  # "file is not a database", "database disk image is malformed"
        raise CorruptStateError(f"{db_path.name} cannot be read: {e}", where=str(db_path), hint=hint) from e
    if rows != ["ok"]:
        raise CorruptStateError(f"{db_path.name} fails PRAGMA {pragma}: {rows[0]}"
                                + (f" (and {len(rows) - 1} more problem(s))" if len(rows) > 1 else ""),
                                where=str(db_path), hint=hint)
    return scan


def sweep_temp(instance_dir: Path, storage_dir: Path) -> int:
    """Delete upload spools and storage temp files a killed server left; returns how many.

    Only safe before any worker runs (``edgepack fleet serve`` calls it first).
    """
    victims = list((instance_dir / "tmp").glob("*.upload"))
    if storage_dir.is_dir():
        victims += list((storage_dir / ".tmp").glob("*.part"))
        victims += [p for p in storage_dir.rglob(".*.tmp") if p.is_file()]
    for p in victims:
        p.unlink(missing_ok=True)
    return len(victims)


def sweep_orphan_bundles(db: Any, storage_dir: Path) -> int:
    """Delete stored bundles that no release row names; returns how many.

    A server killed after ``put_file`` and before its transaction committed leaves one
    (``_releases.store_release``); the client never got its 201. Only safe while no
    upload can be in flight: ``fleet serve`` calls it before gunicorn starts, and only
    for the embedded SQLite database (one host), never for a storage directory that
    servers on other hosts might be writing to.
    """
    from sqlalchemy import select

    from ._models import Release

    root = storage_dir / "releases"
    if not root.is_dir():
        return 0
    with db.read() as s:
        keep = set(s.scalars(select(Release.storage_key)))
    orphans = [p for p in root.rglob("*.edgepack") if p.relative_to(storage_dir).as_posix() not in keep]
    for p in orphans:
        p.unlink(missing_ok=True)
    return len(orphans)


def backup_sqlite(db_path: Path, out: Path) -> int:
    """Copy a live SQLite database consistently (the online backup API) to ``out``; returns its size.

    The copy is written to a temp name, synced, then renamed, so a half-written
    backup never looks like a good one.

    Raises:
        CorruptStateError: the source cannot be read.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(db_path, timeout=30)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            rows = [r[0] for r in dst.execute("PRAGMA integrity_check(1)")]
        finally:
            dst.close()
            src.close()
    except sqlite3.DatabaseError as e:
        tmp.unlink(missing_ok=True)
        raise CorruptStateError(f"cannot back up {db_path.name}: {e}", where=str(db_path)) from e
    if rows != ["ok"]:
        tmp.unlink(missing_ok=True)
        raise CorruptStateError(f"the backup of {db_path.name} fails integrity_check: {rows[0]}",
                                where=str(db_path), hint="the source is damaged: restore an older backup")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out)
    fsync_dir(out.parent)
    return out.stat().st_size
