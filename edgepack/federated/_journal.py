"""The per-update fold records of a round, on disk, so memory stays O(1) in the number of updates.

A :class:`~edgepack.federated.RoundAccumulator` must remember every update id
it folded (a retried upload after a crash must not count twice) and, for
audit and DP accounting, each update's weight, scale, norm and distance. Kept
in a Python list and set, that is ~200 bytes per update: at 1,000 updates of a
1M-parameter model it was 5 % of the model, and it grows without bound in
cross-device rounds. Here the records live in a small SQLite file (the
standard library's ``sqlite3``; the ``update_id`` column is UNIQUE, so a lookup
is an index probe) with a 64 KiB page cache: memory is fixed whatever the
number of updates (measured: 0 bytes more after the first accumulator of a
process; the first one loads SQLite's code, ~0.5 MB once).

Consistency with the sums: the state file written by ``RoundAccumulator.save``
is the commit point. It records ``count`` (how many records its sums include)
and a random ``journal_id`` that this file's ``meta`` table repeats. ``save``
commits the journal (fsynced) before it replaces the state file, so after any
crash the journal holds at least ``count`` rows; rows past ``count`` belong to
folds that were never saved and :meth:`FoldJournal.open` drops them.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import AccumulatorStateError

__all__ = ["FoldJournal", "FoldRecord", "journal_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, update_id TEXT NOT NULL UNIQUE, weight REAL NOT NULL,
    scale REAL NOT NULL, distance REAL, norm REAL);
"""
_CACHE_KIB = 64  # SQLite's page cache bound; it holds the id index's hot pages
_FETCH = 512
# Appends are written in batches: one INSERT per fold cost ~50 us at 1M params, where each fold's
# 12 MB stream evicts SQLite's code and pages from cache (measured); a batch costs about as much as
# one. A bounded list (~13 KB at 64 records), so memory stays fixed.
_BATCH = 64
_INSERT = "INSERT INTO records (update_id, weight, scale, distance, norm) VALUES (?, ?, ?, ?, ?)"


@dataclass(frozen=True)
class FoldRecord:
    """What was folded for one accepted update (kept for audit and DP accounting)."""

    update_id: str
    weight: float
    scale: float = 1.0
    distance: float | None = None  # L2 distance from the running mean when it arrived
    norm: float | None = None  # L2 norm before ``scale``; DP uses it to prove every update was clipped

    def to_dict(self) -> dict[str, Any]:
        return {"update_id": self.update_id, "weight": self.weight, "scale": self.scale,
                "distance": self.distance, "norm": self.norm}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FoldRecord:
        dist, norm = d.get("distance"), d.get("norm")
        return cls(str(d["update_id"]), float(d["weight"]), float(d.get("scale", 1.0)),
                   None if dist is None else float(dist), None if norm is None else float(norm))


def journal_path(state_path: str | os.PathLike[str]) -> Path:
    """Where the records of the accumulator saved at ``state_path`` live: ``<state>.records``."""
    p = Path(state_path)
    return p.with_name(p.name + ".records")


class FoldJournal:
    """Append-only fold records with an id index, in SQLite (``path=None``: a private temp file).

    Appends stay in one open transaction until :meth:`commit`, so an
    accumulator that is never saved never syncs to disk, and a crash before
    ``commit`` rolls the appends back (SQLite's rollback journal).
    """

    def __init__(self, path: Path | None, journal_id: str) -> None:
        self.path = path
        self.journal_id = journal_id
        # "" is SQLite's private temporary on-disk database, deleted when the connection closes.
        self._db = sqlite3.connect("" if path is None else str(path), isolation_level=None,
                                   cached_statements=8, check_same_thread=False)
        # 1 KiB pages: SQLite preallocates 20 cache pages per connection, ~85 KB at its default 4 KiB
        # pages and ~20 KB at 1 KiB (measured). Only applies to a new file, which is all we create.
        self._db.execute("PRAGMA page_size=1024")
        self._db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._cur = self._db.cursor()  # reused: a cursor per call leaves a weakref behind in the connection
        self._pending: list[tuple[str, float, float, float | None, float | None]] = []
        self._count = int(self._cur.execute("SELECT count(*) FROM records").fetchone()[0])

    @classmethod
    def create(cls, journal_id: str) -> FoldJournal:
        j = cls(None, journal_id)
        j._db.execute("INSERT INTO meta VALUES ('journal_id', ?)", (journal_id,))
        return j

    @classmethod
    def open(cls, path: Path, journal_id: str, count: int) -> FoldJournal:
        """Open the records of a saved accumulator, dropping rows its sums do not include.

        Raises:
            AccumulatorStateError: if the file is missing, unreadable, for another
                accumulator, or holds fewer than ``count`` records.
        """
        if not path.is_file():
            raise AccumulatorStateError("the accumulator's records file is missing", where=str(path),
                                        hint="a state file is only valid with the .records file saved beside it")
        try:
            j = cls(path, journal_id)
            row = j._db.execute("SELECT value FROM meta WHERE key = 'journal_id'").fetchone()
            if row is None or row[0] != journal_id:
                j.close()
                raise AccumulatorStateError("the records file belongs to another accumulator", where=str(path))
            if j._count < count:
                j.close()
                raise AccumulatorStateError(f"the records file holds {j._count} update(s), the state counts {count}",
                                            where=str(path))
            if j._count > count:  # folded after the last save, then a crash: not in the saved sums
                # seq is the rowid, 1..n with no gaps: rows are only appended, or dropped from the end here.
                j._db.execute("DELETE FROM records WHERE seq > ?", (count,))
                j._count = count
        except sqlite3.DatabaseError as e:
            raise AccumulatorStateError(f"the records file is unreadable: {e}", where=str(path)) from e
        return j

    def __len__(self) -> int:
        return self._count

    def __contains__(self, update_id: object) -> bool:
        return (any(p[0] == update_id for p in self._pending)
                or self._cur.execute("SELECT 1 FROM records WHERE update_id = ?", (update_id,)).fetchone() is not None)

    def append(self, r: FoldRecord) -> None:
        """Add a record (the caller checked its id is new).

        The batch is written *before* the new record joins it, so if that write
        fails, this record is not added and the caller can refuse its fold.
        """
        if len(self._pending) >= _BATCH:
            self._flush()
        self._pending.append((r.update_id, r.weight, r.scale, r.distance, r.norm))
        self._count += 1

    def _flush(self) -> None:
        if not self._pending:
            return
        if not self._db.in_transaction:
            self._cur.execute("BEGIN")
        self._cur.execute("SAVEPOINT batch")  # all of the batch or none of it, so a retry cannot clash
        try:
            self._cur.executemany(_INSERT, self._pending)
        except sqlite3.Error:
            self._cur.execute("ROLLBACK TO batch")
            raise
        finally:
            self._cur.execute("RELEASE batch")
        self._pending.clear()

    def __iter__(self) -> Iterator[FoldRecord]:
        """Records in fold order, read in batches (memory stays fixed)."""
        self._flush()
        cur = self._db.execute("SELECT update_id, weight, scale, distance, norm FROM records ORDER BY seq")
        while rows := cur.fetchmany(_FETCH):
            for uid, w, s, d, n in rows:
                yield FoldRecord(uid, w, s, d, n)

    def commit(self) -> None:
        """Make every append durable (fsynced)."""
        self._flush()
        if self._db.in_transaction:
            self._db.execute("COMMIT")

    def save_as(self, path: Path) -> FoldJournal:
        """Commit, copy to ``path`` atomically (temp file + rename + fsync) and return the copy, opened.

        The old journal is closed (a temp one is deleted with it).
        """
        self.commit()
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            dst = sqlite3.connect(str(tmp))
            try:
                self._db.backup(dst)
            finally:
                dst.close()
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        self.close()
        return FoldJournal(path, self.journal_id)

    def close(self) -> None:
        self._db.close()
