"""The bundle archive: a canonical, uncompressed zip that trusts nothing it reads.

Why canonical and stored (no deflate): the signature covers the manifest and the
manifest's hashes cover every member's bytes, so the only bytes left are zip
headers. A v1 archive has exactly one valid header layout for a given list of
members, and the reader rebuilds it and compares byte for byte. So every byte
of a bundle is signed, hashed or canonical, and no mutation of any byte can
still verify (``tests/core/test_bundle_fuzz.py``). Deflate would leave padding
bits that decompressors ignore. Members are stored, so a member can never
expand past what it occupies on disk (no zip bombs), and the runtime can read
artifacts without inflating them. The layout is still a plain zip that
``unzip`` and Python's ``zipfile`` read.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ._atomic import atomic_file
from ._errors import (
    ArchiveTooLargeError,
    BundleError,
    CorruptArchiveError,
    DuplicateMemberError,
    MemberSizeError,
    MissingMemberError,
)
from ._manifest import check_member_path

__all__ = ["ArchiveLimits", "Member", "SafeZipReader", "write_archive"]

_LOCAL = struct.Struct("<4sHHHHHLLLHH")  # 30 bytes
_CENTRAL = struct.Struct("<4sHHHHHHLLLHHHHHLL")  # 46 bytes
_END = struct.Struct("<4sHHHHLLH")  # 22 bytes
_VERSION = 20
_MADE_BY = (3 << 8) | _VERSION  # Unix, zip 2.0
_FLAGS = 0x0800  # names are UTF-8
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01: fixed, so bytes never depend on the clock
_EXTERNAL = (0o100644 << 16)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """Limits a reader enforces before reading any member."""

    max_archive_bytes: int = 2 << 30
    max_total_bytes: int = 2 << 30
    max_members: int = 4096
    max_manifest_bytes: int = 1 << 20


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # of the local header
    size: int
    crc: int

    @property
    def data_offset(self) -> int:
        return self.offset + _LOCAL.size + len(self.name.encode())


def _local_header(name: bytes, crc: int, size: int) -> bytes:
    return _LOCAL.pack(b"PK\x03\x04", _VERSION, _FLAGS, 0, 0, _DOS_DATE, crc, size, size, len(name), 0) + name


def _central_header(name: bytes, crc: int, size: int, offset: int) -> bytes:
    return _CENTRAL.pack(b"PK\x01\x02", _MADE_BY, _VERSION, _FLAGS, 0, 0, _DOS_DATE, crc, size, size,
                         len(name), 0, 0, 0, 0, _EXTERNAL, offset) + name


def write_archive(out: Path, members: Iterable[tuple[str, bytes]]) -> Path:
    """Write members as a canonical v1 archive, atomically (temp, fsync, rename)."""
    with atomic_file(out) as f:
        central, offset, count = [], 0, 0
        for name, data in members:
            raw = name.encode("utf-8")
            crc = zlib.crc32(data)
            header = _local_header(raw, crc, len(data))
            f.write(header)
            f.write(data)
            central.append(_central_header(raw, crc, len(data), offset))
            offset += len(header) + len(data)
            count += 1
        cd = b"".join(central)
        f.write(cd)
        f.write(_END.pack(b"PK\x05\x06", 0, 0, count, count, len(cd), offset, 0))
    return out


class SafeZipReader:
    """Open a bundle archive and check its whole structure before any member is read.

    Raises:
        ArchiveTooLargeError: over the size or member-count limits.
        PathTraversalError: a member name escapes the bundle.
        DuplicateMemberError: two members share a name.
        MemberSizeError: a member occupies more bytes than it declares.
        CorruptArchiveError: truncated, not a zip, or not the canonical v1 layout.
    """

    def __init__(self, path: str | os.PathLike[str], limits: ArchiveLimits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or ArchiveLimits()
        where = str(self.path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > self.limits.max_archive_bytes:
                    raise ArchiveTooLargeError(
                        f"archive is {size} bytes, over the {self.limits.max_archive_bytes}-byte limit",
                        where=where, hint="raise the limit only if you trust this bundle's source")
                self.infos = self._read_directory(f, size, where)
        except OSError as e:
            raise BundleError(f"cannot read bundle: {e.strerror}", where=where, hint="check the path") from e

    def _read_directory(self, f, size: int, where: str) -> dict[str, Member]:  # type: ignore[no-untyped-def]
        corrupt = "download or copy the bundle again; do not re-zip a bundle"
        if size < _END.size:
            raise CorruptArchiveError("file is too short to be a bundle (truncated?)", where=where, hint=corrupt)
        f.seek(size - _END.size)
        end = _END.unpack(f.read(_END.size))
        if end[0] != b"PK\x05\x06":
            raise CorruptArchiveError("no zip end record at the end of the file (truncated or not a bundle)",
                                      where=where, hint=corrupt)
        _, disk, cd_disk, n_here, n_total, cd_size, cd_offset, comment = end
        if n_total > self.limits.max_members:
            raise ArchiveTooLargeError(f"archive lists {n_total} members, over the limit of "
                                       f"{self.limits.max_members}", where=where)
        if (disk, cd_disk, comment) != (0, 0, 0) or n_here != n_total or cd_offset + cd_size + _END.size != size:
            raise CorruptArchiveError("zip end record does not match the file (truncated or altered)",
                                      where=where, hint=corrupt)
        f.seek(cd_offset)
        cd = f.read(cd_size)
        raw_entries: list[tuple[tuple[int, ...], bytes]] = []
        pos = 0
        for _ in range(n_total):
            if pos + _CENTRAL.size > len(cd):
                raise CorruptArchiveError("central directory is cut short", where=where, hint=corrupt)
            fields = _CENTRAL.unpack_from(cd, pos)
            name_len, extra_len, comment_len = fields[10], fields[11], fields[12]
            name = cd[pos + _CENTRAL.size: pos + _CENTRAL.size + name_len]
            raw_entries.append((fields, name))
            pos += _CENTRAL.size + name_len + extra_len + comment_len
        # Limits first: a zip bomb is reported as one, whatever else is wrong with it.
        total = sum(fields[9] for fields, _ in raw_entries)
        if total > self.limits.max_total_bytes:
            raise ArchiveTooLargeError(
                f"archive declares {total} bytes of content, over the {self.limits.max_total_bytes}-byte limit",
                where=where, hint="raise the limit only if you trust this bundle's source")
        members: dict[str, Member] = {}
        for fields, raw_name in raw_entries:
            try:
                name = raw_name.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorruptArchiveError("member name is not UTF-8", where=where, hint=corrupt) from e
            check_member_path(name, f"{where}:{name}")
            if name in members:
                raise DuplicateMemberError(f"member {name!r} appears more than once", where=where,
                                           hint="rebuild the bundle; a reader could see either copy")
            members[name] = Member(name, fields[16], fields[9], fields[7])
        if pos != len(cd) or b"".join(
            _central_header(m.name.encode(), m.crc, m.size, m.offset) for m in members.values()
        ) != cd:
            raise CorruptArchiveError("central directory is not in the canonical bundle layout",
                                      where=where, hint=corrupt)
        expected = 0
        ordered = list(members.values())
        for i, m in enumerate(ordered):
            if m.offset != expected:
                raise CorruptArchiveError(f"member {m.name!r} is not where the layout puts it", where=where,
                                          hint=corrupt)
            end_of_data = ordered[i + 1].offset if i + 1 < len(ordered) else cd_offset
            occupied = end_of_data - m.data_offset
            if occupied > m.size:
                raise MemberSizeError(f"member {m.name!r} occupies {occupied} bytes but declares {m.size}",
                                      where=where, hint="the bundle is corrupt or hostile; do not use it")
            if occupied < m.size:
                raise CorruptArchiveError(f"member {m.name!r} is cut short", where=where, hint=corrupt)
            f.seek(m.offset)
            if f.read(m.data_offset - m.offset) != _local_header(m.name.encode(), m.crc, m.size):
                raise CorruptArchiveError(f"local header of {m.name!r} is not canonical", where=where, hint=corrupt)
            expected = end_of_data
        if expected != cd_offset:
            raise CorruptArchiveError("unaccounted bytes before the central directory", where=where, hint=corrupt)
        return members

    def names(self) -> list[str]:
        return list(self.infos)

    def iter_member(self, name: str, max_bytes: int) -> Iterator[bytes]:
        """Yield a member's bytes in chunks, checking its CRC at the end.

        Raises:
            MissingMemberError, MemberSizeError, CorruptArchiveError
        """
        where = f"{self.path}:{name}"
        m = self.infos.get(name)
        if m is None:
            raise MissingMemberError(f"member {name!r} is missing", where=str(self.path))
        if m.size > max_bytes:
            raise MemberSizeError(f"member {name!r} is {m.size} bytes, over its limit of {max_bytes}", where=where)
        crc = 0
        with open(self.path, "rb") as f:
            f.seek(m.data_offset)
            left = m.size
            while left:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    raise CorruptArchiveError("archive ends inside a member (truncated)", where=where)
                left -= len(chunk)
                crc = zlib.crc32(chunk, crc)
                yield chunk
        if crc != m.crc:
            raise CorruptArchiveError(f"member {name!r} fails its CRC check", where=where)

    def read_member(self, name: str, max_bytes: int) -> bytes:
        return b"".join(self.iter_member(name, max_bytes))
