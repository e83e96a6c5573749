"""Helpers that tamper with bundles the way an attacker would."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from edgepack._archive import SafeZipReader, write_archive


def members_of(path: Path) -> list[tuple[str, bytes]]:
    r = SafeZipReader(path)
    return [(n, r.read_member(n, 1 << 30)) for n in r.names()]


def rewrite(path: Path, replace: dict[str, bytes] | None = None,
            extra: list[tuple[str, bytes]] | None = None) -> Path:
    """Rewrite a bundle in the canonical layout with some members changed, so
    the archive stays well-formed and only the targeted check can fail."""
    replace = replace or {}
    items = [(n, replace.get(n, d)) for n, d in members_of(path)] + (extra or [])
    return write_archive(path, items)


def raw_zip(path: Path, items: list[tuple[str, bytes]]) -> Path:
    """Write members with Python's zipfile (allows names and duplicates the
    edgepack writer refuses)."""
    import warnings
    import zipfile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on duplicate names; that is the point
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in items:
                zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return path


def shrink_declared_size(path: Path, member: str, by: int) -> Path:
    """Lower a member's declared size in both headers (and the layout), so
    its data runs past what it declares."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    local = data.find(b"PK\x03\x04" + bytes(22) [:0])
    # local header: find by scanning for the name right after a local header
    i = 0
    while True:
        i = data.find(b"PK\x03\x04", i)
        assert i >= 0, "member not found"
        nlen = struct.unpack_from("<H", data, i + 26)[0]
        if data[i + 30:i + 30 + nlen] == name:
            break
        i += 4
    for off in (i + 18, i + 22):  # compressed and uncompressed size
        struct.pack_into("<L", data, off, struct.unpack_from("<L", data, off)[0] - by)
    j = 0
    while True:
        j = data.find(b"PK\x01\x02", j)
        assert j >= 0
        nlen = struct.unpack_from("<H", data, j + 28)[0]
        if data[j + 46:j + 46 + nlen] == name:
            break
        j += 4
    for off in (j + 20, j + 24):
        struct.pack_into("<L", data, off, struct.unpack_from("<L", data, off)[0] - by)
    del local
    path.write_bytes(bytes(data))
    return path


def edit_manifest(path: Path, **changes: object) -> Path:
    from edgepack import canonical_bytes

    members = dict(members_of(path))
    doc = json.loads(members["manifest.json"])
    doc.update(changes)
    return rewrite(path, {"manifest.json": canonical_bytes(doc)})
