"""The long fuzzing run (issue 8 item 2): every parser target of tests/support/fuzz.py and
every JSON endpoint (tests/support/fuzz_http.py), for a wall-clock budget split evenly
between targets; reports the inputs tried and the crashes found per target.

    .venv/bin/python benchmarks/fuzz_long.py --minutes 20 [--target http] [--json out.json]

Exit status 1 if any target crashed (each crash is printed with the input that caused it);
the in-suite runs use the same targets with the bounded ``fuzz-ci`` profile.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from support.fuzz import TARGETS  # noqa: E402

BATCH = 100  # hypothesis examples per batch; batches repeat (fresh random seeds) until the budget is spent


def _http_target(tmp: Path):
    from support.fuzz_http import HttpFuzz

    from edgepack import Trust, generate_key
    from fleet_server import FleetConfig, create_app

    key = generate_key()
    Trust.of([key.public]).save(tmp / "trust.json")
    cfg = FleetConfig(instance_dir=tmp / "instance", database_url=f"sqlite:///{tmp / 'fleet.db'}",
                      secret_key="s" * 48, release_trust=tmp / "trust.json", tick_interval_s=0,
                      report_tick_interval_s=0, testing=True)
    app = create_app(dataclasses.replace(cfg, enroll_failure_limit=0, login_failure_limit=0,
                                         admin_auth_failure_limit=0))
    fz = HttpFuzz(app, key)
    return fz.strategy(), fz.run, app


def run_target(name: str, strategy, run, seconds: float) -> dict:
    tried, crashes = 0, []
    end = time.monotonic() + seconds

    def one(data) -> None:
        nonlocal tried
        x = data.draw(strategy)
        tried += 1
        run(x)

    while time.monotonic() < end:
        test = settings(settings.get_profile("fuzz-long"), max_examples=BATCH)(given(st.data())(one))
        try:
            test()
        except Exception as e:  # noqa: BLE001 (a crash: recorded with its input, then the run goes on)
            crashes.append({"error": f"{type(e).__name__}: {str(e)[:500]}",
                            "trace": traceback.format_exc()[-2000:]})
            print(f"[{name}] CRASH {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
    return {"target": name, "inputs": tried, "crashes": len(crashes), "seconds": round(seconds, 1),
            "crash_details": crashes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, required=True, help="total wall-clock budget")
    p.add_argument("--target", action="append", help="only these targets (repeat); default: all + http")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)
    names = a.target or [*sorted(TARGETS), "http"]
    share = a.minutes * 60 / len(names)
    results = []
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            if name == "http":
                strategy, run, app = _http_target(Path(d))
            else:
                strategy, run, app = TARGETS[name].strategy, TARGETS[name].run, None
            results.append(run_target(name, strategy, run, share))
            if app is not None:
                app.extensions["edgepack_fleet"].db.dispose()
            r = results[-1]
            print(f"{name:<15} inputs {r['inputs']:>8}  crashes {r['crashes']}", flush=True)
    load = Path("/proc/loadavg").read_text().split()[:3] if os.path.exists("/proc/loadavg") else []
    total = {"inputs": sum(r["inputs"] for r in results), "crashes": sum(r["crashes"] for r in results)}
    print(f"{'total':<15} inputs {total['inputs']:>8}  crashes {total['crashes']}   load {' '.join(load)}")
    if a.json:
        a.json.write_text(json.dumps({"results": results, "total": total, "minutes": a.minutes, "load": load,
                                      "machine": platform.platform(), "cpus": os.cpu_count()}, indent=2))
    return 1 if total["crashes"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
