"""What deleting expired nonces costs the check-in path at steady state (SQLite).

At 1,000 check-ins/s with the 300 s clock window the nonce table holds about 301,000
rows (signed timestamps of the last 301 s), and 1,000 expire every second. This fills a
fresh fleet database to that size plus 41 s of expired rows, then times
``CheckinStore.check_in`` directly (no HTTP): ordinary check-ins, and check-ins that also
run a prune (each deletes the 2 s of rows one prune may take: 2,000 rows). The
prune runs inside the check-in's transaction, under the write lock, so its time is
what every other writer waits. bench_fleet.py's 20 s phase never reaches this state.

Usage: ``.venv/bin/python benchmarks/bench_nonce_prune.py`` (about 30 s)
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fleet import CLI, _enroll_direct  # noqa: E402

from fleet_server import load_config  # noqa: E402
from fleet_server._app import Fleet  # noqa: E402
from fleet_server._checkin import Heartbeat  # noqa: E402

RATE, WINDOW, EXPIRED_S = 1_000, 301, 41


def main() -> None:
    inst = Path(tempfile.mkdtemp(prefix="bench-prune-")) / "instance"
    subprocess.run([*CLI, "fleet", "init", "--instance", str(inst), "--group", "default", "--group", "rollout",
                    "--json"], capture_output=True, check=True)
    devices = _enroll_direct(inst, 1_000, 10)
    fleet = Fleet(load_config(inst, tick_interval_s=0, secret_key="unused-by-this-benchmark-" + "x" * 16))
    now = int(time.time())
    con = sqlite3.connect(fleet.config.db_url.split("///", 1)[1])
    total = RATE * (WINDOW + EXPIRED_S)
    rows = ((now - WINDOW - EXPIRED_S + i // RATE, os.urandom(16).hex(), devices[i % len(devices)][0])
            for i in range(total))
    with con:
        con.executemany("INSERT INTO nonces (ts, nonce, device_id) VALUES (?, ?, ?)", rows)
    con.close()
    store = fleet.checkins
    keys = [(d, store.public_key(d)) for d, _, _ in devices]
    hb = Heartbeat(1, {"charging": True, "idle": True, "wifi": True})

    def run(n: int, prune: bool) -> list[float]:
        lat = []
        for i in range(n):
            did, key = keys[i % len(keys)]
            store._prune_at = 0.0 if prune else float("inf")
            clock = now - EXPIRED_S + 2 * (i + 1) if prune else now  # each prune finds 2 s more expired
            t0 = time.perf_counter()
            store.check_in(did, key, os.urandom(16).hex(), int(clock), clock, hb)
            lat.append((time.perf_counter() - t0) * 1000)
        return lat

    plain, pruning = run(2_000, False), run(EXPIRED_S // 2, True)
    print(f"nonce rows at start: {total:,}; load average {os.getloadavg()[0]:.2f}")
    print(f"check-in without prune: median {statistics.median(plain):.3f} ms, max {max(plain):.1f} ms")
    print(f"check-in with a prune (up to 2 s = {2 * RATE:,} expired rows): median "
          f"{statistics.median(pruning):.3f} ms, max {max(pruning):.1f} ms")
    fleet.db.dispose()


if __name__ == "__main__":
    main()
