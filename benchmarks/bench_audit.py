"""What the audit trail costs: enrollment with and without its audit row (side by side, in
alternating batches, one process), appends per second, and how fast ``verify`` walks a chain.

    .venv/bin/python benchmarks/bench_audit.py [--enrolls 400] [--rows 20000] [--db sqlite|URL]

In-process (Flask test client, no HTTP), SQLite WAL in a temp dir unless ``--db`` names a
PostgreSQL URL. Prints one JSON object; the load average is read at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgepack import generate_key  # noqa: E402


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--enrolls", type=int, default=400)
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--db", default="sqlite")
    a = p.parse_args(argv)
    load0 = _load()
    from fleet_server import FleetConfig, create_app
    from fleet_server import _bp_device as dev_bp
    from fleet_server._audit import record, verify
    from fleet_server._bp_admin import create_enrollment_token

    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{Path(d) / 'fleet.db'}" if a.db == "sqlite" else a.db
        app = create_app(FleetConfig(instance_dir=Path(d) / "i", database_url=url, secret_key="s" * 48,
                                     tick_interval_s=0, testing=True))
        fleet = app.extensions["edgepack_fleet"]
        client = app.test_client()
        keys = [generate_key().public.raw.hex() for _ in range(a.enrolls)]
        tokens = [create_enrollment_token(fleet, "default", {}, 3600)["token"] for _ in range(a.enrolls)]
        times = {"with_audit": 0.0, "without_audit": 0.0}
        real = dev_bp.record
        for i in range(a.enrolls):  # alternate, so load changes hit both sides alike
            mode = "with_audit" if i % 2 == 0 else "without_audit"
            dev_bp.record = real if mode == "with_audit" else (lambda *x, **k: None)
            t = time.perf_counter()
            r = client.post("/api/v1/enroll", json={"token": tokens[i], "public_key": keys[i]})
            times[mode] += time.perf_counter() - t
            assert r.status_code == 201, r.json
        dev_bp.record = real
        half = a.enrolls / 2
        per = {k: v / half * 1000 for k, v in times.items()}

        t = time.perf_counter()
        for i in range(a.rows // 100):
            with fleet.db.write() as s:
                for j in range(100):
                    record(s, "system", "bench.append", f"row:{i}:{j}", "benchmark", {"i": i, "j": j})
        batch_s = time.perf_counter() - t
        t = time.perf_counter()
        n_single = min(2000, a.rows // 10)
        for i in range(n_single):
            with fleet.db.write() as s:
                record(s, "system", "bench.single", f"row:{i}", "benchmark")
        single_s = time.perf_counter() - t
        t = time.perf_counter()
        rep = verify(fleet.db)
        verify_s = time.perf_counter() - t
        fleet.db.dispose()
    out = {
        "enroll_ms_with_audit": round(per["with_audit"], 2), "enroll_ms_without_audit": round(per["without_audit"], 2),
        "enroll_ratio": round(per["with_audit"] / per["without_audit"], 3),
        "appends_per_s_batched_100": round(a.rows / batch_s), "appends_per_s_one_per_txn": round(n_single / single_s),
        "verify_rows": rep.rows, "verify_rows_per_s": round(rep.rows / verify_s), "db": "sqlite" if a.db == "sqlite"
        else "postgresql", "load_start": load0, "load_end": _load(),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
