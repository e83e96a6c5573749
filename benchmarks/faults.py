"""Fault injection, repeated: SIGKILL the fleet server and the device agent at random points,
many times, and count what went wrong afterwards.

Each round runs every scenario of ``tests/support/faults.py`` once (the upload scenario
kills ``--upload-kills`` uploads per server, the install one 5 installs, the WAL one damages
2 copies) with kill points, free space and damaged bytes drawn from a seeded RNG, on real
parts (gunicorn + SQLite on 127.0.0.1, ``edgepack device run``, real ONNX inference, a
3 MB tmpfs for the full disk, so run it as root).
After each restart the scenario checks its invariants; a problem is either *data loss*
(something a client got a 2xx for is gone) or an *inconsistency* (state that disagrees
with itself or with what clients were told; a device not on a verified model). Run:

    .venv/bin/python benchmarks/faults.py --rounds 5

and it prints one row per fault kind. Exit status 1 if any problem was found.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "tests"))  # after the project: tests/runtime must not shadow the runtime package

from support import faults  # noqa: E402

from edgepack import Trust, generate_key  # noqa: E402

SCENARIOS = ["upload_kill", "round_close_kill", "agent_download_kill", "install_kill", "training_kill", "disk_full",
             "wal_damage"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="repeat every scenario this many times")
    ap.add_argument("--upload-kills", type=int, default=3, help="upload kills per server lifetime")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", action="append", choices=SCENARIOS, help="run only these scenarios (repeat)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    key = generate_key()
    rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    problems: list[str] = []
    load_before = os.getloadavg()
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgepack-faults-") as tmp:
        trust_file = Path(tmp) / "trust.json"
        Trust.of([key.public]).save(trust_file)
        for r in range(args.rounds):
            for name in args.only or SCENARIOS:
                rng = random.Random(f"{args.seed}-{r}-{name}")
                work = Path(tmp) / f"{name}-{r}"
                work.mkdir()
                # wider windows than the tests: some kills land after the answer, the rest anywhere in the work
                # (a round closes in 0.1-0.4 s here depending on the load: 0.3 s puts most kills inside it)
                kw = {"upload_kill": {"kills": args.upload_kills}, "round_close_kill": {"window_s": 0.3},
                      "training_kill": {"after_upload": 0.25}}.get(name, {})
                t0 = time.perf_counter()
                out = getattr(faults, name)(work, trust_file, key, rng, **kw)
                row = rows[out.kind]
                row["runs"] += 1
                row["injected"] += out.injected
                row["mid"] += out.mid
                row["data_loss"] += out.data_loss
                row["inconsistent"] += out.inconsistent
                row["devices"] += out.devices
                row["verified"] += out.verified
                row["seconds"] += time.perf_counter() - t0
                problems += [f"{out.kind} (round {r}): {p}" for p in out.problems]
                print(f"round {r} {name}: injected {out.injected}, problems {len(out.problems)}", file=sys.stderr)
    total_s = time.perf_counter() - t_all

    print(f"\nfault injection: {args.rounds} round(s), seed {args.seed}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, load average before {load_before[0]:.2f} after {os.getloadavg()[0]:.2f}, "
          f"{total_s:.0f} s\n")
    print("| fault | injected | mid-operation | data-loss events | inconsistency events | devices on a verified model |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    tot = defaultdict(float)
    for kind, row in rows.items():
        dev = f"{int(row['verified'])}/{int(row['devices'])}" if row["devices"] else "n/a (no device)"
        print(f"| {kind} | {int(row['injected'])} | {int(row['mid'])} | {int(row['data_loss'])} | "
              f"{int(row['inconsistent'])} | {dev} |")
        for k, v in row.items():
            tot[k] += v
    print(f"| **total** | {int(tot['injected'])} | {int(tot['mid'])} | {int(tot['data_loss'])} | "
          f"{int(tot['inconsistent'])} | {int(tot['verified'])}/{int(tot['devices'])} |")
    for p in problems:
        print("PROBLEM:", p)
    if args.json:
        args.json.write_text(json.dumps({"rounds": args.rounds, "seed": args.seed, "seconds": total_s,
                                         "load_before": load_before, "load_after": os.getloadavg(),
                                         "rows": rows, "problems": problems}, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
