"""The signed check-in hot path: one transaction and one commit per authenticated device request.

Every device request (heartbeat, assignment poll, reports, TUF reads, rounds) is
authenticated by ``_auth.authenticate_device``. At 1,000 check-ins/s on two cores
its database work has to cost tens of microseconds; through the ORM it cost
milliseconds (three sessions, seven statements, each one built, cache-keyed and
compiled again: see benchmarks/RESULTS.md, "fleet server at fleet scale"). So this
module runs a few fixed SQL strings on the DBAPI connection itself. They are plain
SQL that SQLite (3.24+) and PostgreSQL (9.5+) both accept unchanged.

* **Public-key cache (per worker process).** ``device id -> key``, so the signature is
  checked before any transaction. It holds only the key, which never changes for a
  device id; the device's *status* is not cached. Revocation therefore needs no cache
  invalidation: it is checked in the transaction below, on every request, in every
  worker. A key that differs from the stored one (it cannot, today: no API changes a
  device's key) is evicted and the request refused.
* **One transaction** after the signature and clock checks, in this order:

  1. ``INSERT`` (signed timestamp, nonce) ``ON CONFLICT DO NOTHING``: zero rows inserted means
     a replay. The primary key makes this atomic across every gunicorn worker and thread.
  2. ``SELECT`` the device with its group and desired release: it must be ``active`` and
     have the key that verified the signature.
  3. ``UPDATE`` ``last_seen_at`` (at most every ``seen_every_s``) and, for a heartbeat,
     ``active_version``/``state`` only when they changed.
  4. At most every ``prune_every_s`` (0.5 s) per worker, ``DELETE`` the nonces whose signed
     timestamp left the window: one contiguous range of the (ts, nonce) key, at most two
     seconds of it per prune, so the write lock is never held for a backlog.
  5. ``COMMIT``; the answer is sent only after it, so nothing acknowledged is lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgepack import PublicKey
from edgepack._device_auth import RequestSignatureError

from ._db import Database
from ._errors import BadRequestError, UnknownDeviceError
from ._http import opt
from ._models import Device, Group, Nonce, Release

#: one prune deletes at most this many seconds of signed timestamps (a backlog after downtime
#: goes in steps, so the write lock is never held for long)
_PRUNE_SPAN_S = 2
_USE_FLOCK = os.environ.get("EDGEPACK_CHECKIN_FLOCK", "1") != "0"  # A/B switch for the benchmark only

__all__ = ["CheckinStore", "DeviceRow", "Heartbeat", "ReleaseInfo", "heartbeat_from_doc"]


@dataclass(frozen=True)
class ReleaseInfo:
    """The fields of a device's desired release that the assignment answer needs."""

    name: str
    version: int
    sha256: str
    size: int
    kind: str
    base_version: int | None


@dataclass(frozen=True)
class DeviceRow:
    """An authenticated device as read in its check-in transaction (before this request's update)."""

    id: str
    public_key: str
    status: str
    group_id: int
    group_name: str
    last_seen_at: float | None
    active_version: int | None
    state: dict[str, Any]
    desired_release_id: int | None
    rollout_id: int | None
    wave: int | None
    release: ReleaseInfo | None


@dataclass(frozen=True)
class Heartbeat:
    """What a heartbeat reports; written in the same transaction as its nonce, only if it changed."""

    active_version: int | None
    state: dict[str, bool]


def heartbeat_from_doc(doc: dict[str, Any] | None) -> Heartbeat:
    """A heartbeat body (``{"active_version", "state": {"charging", "idle", "wifi"}}``), validated.

    Raises:
        BadRequestError: not an object, or a field of the wrong type.
    """
    if not isinstance(doc, dict):
        raise BadRequestError("the body must be a JSON object", where="body")
    state = opt(doc, "state", dict, {})
    return Heartbeat(opt(doc, "active_version", int),
                     {k: state[k] for k in ("charging", "idle", "wifi") if isinstance(state.get(k), bool)})


@dataclass(frozen=True)
class _LoadedKey(PublicKey):
    """A PublicKey with its cryptography object loaded once (loading costs as much as half a verify)."""

    loaded: Ed25519PublicKey = field(compare=False, repr=False)

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self.loaded.verify(signature, message)
        except InvalidSignature:
            return False
        return True


def _sql(db: Database) -> dict[str, str]:
    q = db.engine.dialect.identifier_preparer.quote
    dev, grp, rel, non = (q(t.__tablename__) for t in (Device, Group, Release, Nonce))
    sql = {
        "key": f"SELECT public_key FROM {dev} WHERE id = ?",
        "nonce": f"INSERT INTO {non} (ts, nonce, device_id) VALUES (?, ?, ?) ON CONFLICT (ts, nonce) DO NOTHING",
        "device": f"SELECT d.public_key, d.status, d.group_id, g.name, d.last_seen_at, d.active_version, d.state, "
                  f"d.desired_release_id, d.rollout_id, d.wave, r.name, r.version, r.sha256, r.size, r.kind, "
                  f"r.base_version FROM {dev} d JOIN {grp} g ON g.id = d.group_id "
                  f"LEFT JOIN {rel} r ON r.id = d.desired_release_id WHERE d.id = ?",
        "seen": f"UPDATE {dev} SET last_seen_at = ? WHERE id = ?",
        "heartbeat": f"UPDATE {dev} SET last_seen_at = ?, active_version = ?, state = ? WHERE id = ?",
        # rows are keyed (ts, nonce): the oldest first, and a range of them is a few contiguous pages
        "oldest": f"SELECT MIN(ts) FROM {non}",
        "prune": f"DELETE FROM {non} WHERE ts < ?",
    }
    paramstyle = db.engine.dialect.loaded_dbapi.paramstyle  # sqlite3: qmark; psycopg: pyformat/format
    return sql if paramstyle == "qmark" else {k: v.replace("?", "%s") for k, v in sql.items()}


class CheckinStore:
    """The key cache and the one-transaction check-in, for one worker process.

    Each thread keeps its own DBAPI connection (opened through the engine, so the
    SQLite pragmas apply); SQLite writers in one process queue on the database's
    write lock, as ``Database.write`` does.
    """

    def __init__(self, db: Database, *, nonce_window_s: int = 301, seen_every_s: float = 5.0,
                 prune_every_s: float = 0.5, max_cached_keys: int = 200_000) -> None:
        self._db = db
        self._window_s = nonce_window_s
        self._sql = _sql(db)
        self._seen_every_s = seen_every_s
        self._prune_every_s = prune_every_s
        self._max_keys = max_cached_keys
        self._keys: dict[str, _LoadedKey] = {}
        self._local = threading.local()
        self._open: list[Any] = []  # every thread's connection, so dispose can close them all
        self._open_lock = threading.Lock()
        self._prune_at = 0.0
        self._error = db.engine.dialect.loaded_dbapi.Error
        db_file = db.url.split("///", 1)[-1] if db.is_sqlite else ""
        self._lock_path = f"{db_file}-checkin.lock" if db_file and db_file != ":memory:" else None
        self._lock_fd: int | None = None
        self._lock_pid = 0
        db.on_dispose(self.close_all)

    # ---- connections --------------------------------------------------------------------------
    def _connection(self) -> Any:
        fairy = getattr(self._local, "fairy", None)
        if fairy is None:
            fairy = self._db.engine.raw_connection()
            fairy.detach()  # ours for the thread's life: no pool round trip (or pre-ping) per request
            self._local.fairy = fairy
            with self._open_lock:
                self._open.append(fairy)
        return fairy.dbapi_connection

    def close_all(self) -> None:
        """Close every thread's connection (``Database.dispose`` calls this)."""
        with self._open_lock:
            open_, self._open = self._open, []
        for fairy in open_:
            with contextlib.suppress(self._error):
                fairy.close()
        self._local = threading.local()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _discard(self) -> None:
        fairy = getattr(self._local, "fairy", None)
        self._local.fairy = None
        if fairy is not None:
            with self._open_lock:
                if fairy in self._open:
                    self._open.remove(fairy)
            with contextlib.suppress(self._error):  # already broken: dropping it is all we can do
                fairy.close()

    def close(self) -> None:
        """Close this thread's connection (tests and shutdown)."""
        self._discard()

    # ---- the key cache ------------------------------------------------------------------------
    def public_key(self, device_id: str) -> PublicKey:
        """The device's registered key (cached per process).

        Raises:
            UnknownDeviceError: no device has this id.
        """
        key = self._keys.get(device_id)
        if key is not None:
            return key
        cur = self._connection().cursor()
        try:
            cur.execute(self._sql["key"], (device_id,))
            row = cur.fetchone()
            self._end(commit=False)
        except self._error:
            self._discard()
            raise
        finally:
            with contextlib.suppress(self._error):
                cur.close()
        if row is None:
            raise UnknownDeviceError(f"unknown or revoked device {device_id!r}", where="X-Edgepack-Device",
                                     hint="enroll the device with a fresh enrollment token")
        raw = bytes.fromhex(row[0])
        key = _LoadedKey(raw, Ed25519PublicKey.from_public_bytes(raw))
        if len(self._keys) >= self._max_keys:
            self._keys.clear()  # a bounded cache; refilling costs one indexed read per device
        self._keys[device_id] = key
        return key

    def forget(self, device_id: str) -> None:
        self._keys.pop(device_id, None)

    # ---- the transaction ----------------------------------------------------------------------
    def _end(self, commit: bool) -> None:
        conn = self._connection()
        if self._db.is_sqlite:
            if conn.in_transaction:
                conn.execute("COMMIT" if commit else "ROLLBACK")
        elif commit:
            conn.commit()
        else:
            conn.rollback()

    def check_in(self, device_id: str, key: PublicKey, nonce: str, ts: int, now: float,
                 heartbeat: Heartbeat | None = None) -> DeviceRow | None:
        """Record one authenticated request; return the device, or None if the nonce was seen before.

        Call only after the signature (by ``key``) and the clock window were verified; ``ts`` is
        the request's signed timestamp (a replay repeats it, with the nonce).

        Raises:
            UnknownDeviceError: the device is unknown or revoked (nothing is written).
            RequestSignatureError: the device's stored key is not ``key``.
        """
        if not self._db.is_sqlite:
            return self._transaction(device_id, key, nonce, ts, now, heartbeat)
        with self._db.write_lock, self._file_lock():
            return self._transaction(device_id, key, nonce, ts, now, heartbeat)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """SQLite only: serialise the check-in writers of all worker processes on an flock'd file.

        A writer blocked on flock wakes the moment the holder lets go; one blocked in SQLite's
        busy handler sleeps 1, 2, 5, 10 ... 100 ms between tries, so a worker descheduled in
        the middle of its transaction (a busy machine) stalled the other for far longer.
        """
        if self._lock_path is None or not _USE_FLOCK:
            yield
            return
        if self._lock_fd is None or self._lock_pid != os.getpid():  # one description per process
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._lock_pid = os.getpid()
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _transaction(self, device_id: str, key: PublicKey, nonce: str, ts: int, now: float,
                     hb: Heartbeat | None) -> DeviceRow | None:
        conn = self._connection()
        sql = self._sql
        try:
            cur = conn.cursor()
        except self._error:  # a connection that died while idle: drop it, the next request opens another
            self._discard()
            raise
        committed = False
        try:
            if self._db.is_sqlite:
                cur.execute("BEGIN IMMEDIATE")  # we write first, so no read-then-upgrade (SQLITE_BUSY_SNAPSHOT)
            cur.execute(sql["nonce"], (ts, nonce, device_id))
            if cur.rowcount != 1:
                return None
            cur.execute(sql["device"], (device_id,))
            r = cur.fetchone()
            if r is None or r[1] != "active":
                raise UnknownDeviceError(f"unknown or revoked device {device_id!r}", where="X-Edgepack-Device",
                                         hint="enroll the device with a fresh enrollment token")
            if r[0] != key.raw.hex():
                self.forget(device_id)
                raise RequestSignatureError("the request signature does not match this device's key",
                                            where=f"device {device_id}")
            state = json.loads(r[6]) if isinstance(r[6], str) else (r[6] or {})
            stale = r[4] is None or now - r[4] >= self._seen_every_s
            if hb is not None and (hb.active_version != r[5] or hb.state != state):
                cur.execute(sql["heartbeat"], (now, hb.active_version, json.dumps(hb.state), device_id))
            elif stale:
                cur.execute(sql["seen"], (now, device_id))
            if now >= self._prune_at:  # nonces outside every request's window can never match again
                self._prune_at = now + self._prune_every_s
                cur.execute(sql["oldest"])
                oldest = cur.fetchone()[0]
                cutoff = int(now) - self._window_s
                if oldest is not None and oldest < cutoff:
                    cur.execute(sql["prune"], (min(cutoff, oldest + _PRUNE_SPAN_S),))
            self._end(commit=True)
            committed = True
        except self._error:
            self._discard()
            raise
        finally:
            with contextlib.suppress(self._error):  # its connection may be closed already
                cur.close()
            if not committed and getattr(self._local, "fairy", None) is not None:
                try:
                    self._end(commit=False)
                except self._error:  # the rollback itself failed: never reuse a connection mid-transaction
                    self._discard()
        rel = None if r[10] is None else ReleaseInfo(r[10], r[11], r[12], r[13], r[14], r[15])
        return DeviceRow(device_id, r[0], r[1], r[2], r[3], r[4], r[5], state, r[7], r[8], r[9], rel)
