"""Fault: a damaged SQLite database page, and a damaged or truncated WAL.

``edgepack fleet serve`` checks the WAL frames and ``PRAGMA integrity_check`` before
gunicorn starts (fleet_server/_recovery.py): damage that would make it serve wrong
data is refused with one line and exit 13; ``edgepack fleet backup`` + restore brings
the server back. A torn WAL *tail* is what a crash mid-append leaves, so it starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from support.faults import committed_transactions, wal_snapshot
from support.server import CLI, Server, free_port, http_json

from edgepack import CorruptStateError
from fleet_server._recovery import scan_wal

pytestmark = pytest.mark.slow  # each test starts the server (a subprocess) once or twice

N_TX = 6


def _serve_refused(inst: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``fleet serve`` expecting it to refuse; if it starts instead, stop it and fail."""
    p = subprocess.Popen([*CLI, "fleet", "serve", "--instance", str(inst), "--port", str(free_port()),
                          "--workers", "1", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise AssertionError("fleet serve started on damaged state instead of refusing it") from None
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _wal_snapshot(inst: Path, dest: Path) -> None:
    wal_snapshot(inst, dest, N_TX)


def _started(inst: Path, *extra: str) -> bool:
    server = Server(inst, free_port(), extra_args=list(extra))
    server.start()
    try:
        return http_json("GET", f"{server.url}/healthz")[0] == 200
    finally:
        server.stop()


def test_damaged_page_is_refused_with_exit_13_and_a_backup_restores_service(instance, tmp_path):
    inst, _ = instance
    backup = tmp_path / "backups" / "fleet.db"
    out = subprocess.run([*CLI, "fleet", "backup", "--instance", str(inst), "--out", str(backup)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    db = inst / "fleet.db"
    con = sqlite3.connect(db)
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    # the b-tree root of a table that has rows (a free or overflow page could hold anything)
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE type='table' AND name='admin_tokens'").fetchone()[0]
    assert con.execute("SELECT count(*) FROM admin_tokens").fetchone()[0] >= 1 and root > 1
    con.close()
    raw = bytearray(db.read_bytes())
    at = page_size * (root - 1)
    raw[at:at + page_size] = bytes([0xA5]) * page_size
    db.write_bytes(bytes(raw))

    bad = _serve_refused(inst)
    assert bad.returncode == CorruptStateError.exit_code == 13
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgepack: error:") and "fleet.db" in lines[0], bad.stderr
    assert "integrity_check" in lines[0] or "cannot be read" in lines[0]
    assert "backup" in lines[0] and "Traceback" not in bad.stderr

    shutil.copyfile(backup, db)  # the documented restore: stop, copy back, drop the stale WAL/SHM
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    assert _started(inst)


def test_damaged_wal_frame_before_committed_transactions_is_refused(instance, tmp_path):
    inst, _ = instance
    crashed = tmp_path / "crashed"
    _wal_snapshot(inst, crashed)
    wal = crashed / "fleet.db-wal"
    scan = scan_wal(wal)
    assert scan.damaged_frame is None and scan.valid_frames == scan.frames >= N_TX
    page_size = int.from_bytes(wal.read_bytes()[8:12], "big")
    raw = bytearray(wal.read_bytes())
    at = 32 + (page_size + 24) * 1 + 24 + 100  # inside the page of frame 2
    raw[at] ^= 0xFF
    wal.write_bytes(bytes(raw))
    scan = scan_wal(wal)
    assert scan.damaged_frame == 2 and scan.lost_commits >= N_TX - 1

    bad = _serve_refused(crashed)
    assert bad.returncode == 13, bad.stderr
    line, = bad.stderr.strip().splitlines()
    assert "fleet.db-wal is damaged at frame 2" in line and "committed transaction" in line
    assert "--accept-wal-loss" in line
    assert wal.read_bytes() == bytes(raw)  # refused before SQLite could replay (and drop) anything

    assert _started(crashed, "--accept-wal-loss")  # the operator's explicit choice
    assert len(committed_transactions(crashed)) < N_TX


@pytest.mark.parametrize("cut", ["mid_frame", "last_frame_damaged"])
def test_torn_wal_tail_starts_on_a_prefix_of_whole_transactions(instance, tmp_path, cut):
    # A crash mid-append (SQLite writes a frame's header and page separately) leaves exactly this,
    # and that transaction was never acknowledged: start, and lose nothing that was.
    inst, _ = instance
    crashed = tmp_path / "crashed"
    _wal_snapshot(inst, crashed)
    wal = crashed / "fleet.db-wal"
    raw = bytearray(wal.read_bytes())
    if cut == "mid_frame":
        raw = raw[:len(raw) - 1000]
    else:
        raw[-50] ^= 0xFF
    wal.write_bytes(bytes(raw))
    assert not scan_wal(wal).damaged
    assert _started(crashed)
    done = committed_transactions(crashed)
    assert done == list(range(N_TX - 1))  # every whole transaction before the torn one, in order


def test_damaged_wal_header_with_frames_behind_it_is_refused_unless_the_loss_is_accepted(instance, tmp_path):
    from fleet_server._recovery import check_sqlite

    inst, _ = instance
    crashed = tmp_path / "crashed"
    _wal_snapshot(inst, crashed)
    wal = crashed / "fleet.db-wal"
    raw = bytearray(wal.read_bytes())
    raw[20] ^= 0xFF  # salt-2 of the header: its checksum no longer matches, so SQLite ignores every frame
    wal.write_bytes(bytes(raw))
    with pytest.raises(CorruptStateError, match="WAL header of fleet.db-wal is damaged"):
        check_sqlite(crashed / "fleet.db")
    check_sqlite(crashed / "fleet.db", accept_wal_loss=True)
    assert committed_transactions(crashed) == []  # what accepting that loss means
