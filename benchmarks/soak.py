"""Soak: thousands of simulated devices against one real fleet server on 127.0.0.1, bounded in time.

The server is ``edgepack fleet serve`` (gunicorn, SQLite WAL, TUF) in its own process
group. ``--devices`` devices are enrolled through the API (not timed), each with its own
Ed25519 key; then ``--procs`` client processes run them for ``--minutes`` (or until
``--max-requests``). A device checks in about every ``--interval`` seconds: a signed
heartbeat, its assignment, and if a release is assigned, the signed TUF target download
(sha256 checked) and an install report; every 4th check-in a telemetry report; every 3rd
it asks for a federated round and, if selected, uploads a signed update once.

While that runs the script starts a federated round (at 15 % of the run, deadline at
65 %: the server's background tick closes it under load) and uploads release v2 with a
three-wave rollout (at 25 %). Every ``--sample-s`` seconds it sums the RSS of the
server's processes (gunicorn master and workers, from /proc/PID/status). It prints
throughput, p50/p99 latency per request kind, errors, the RSS timeline, and a verdict
on memory growth: the least-squares slope of RSS over the second half of the run.

    .venv/bin/python benchmarks/soak.py --devices 2000 --minutes 3
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import http.client
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "tests"))  # after the project: tests/runtime must not shadow the runtime package

import numpy as np  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from support.faults import FleetProc, linear_bundle  # noqa: E402

from edgepack import SigningKey, Trust, generate_key  # noqa: E402
from edgepack._device_auth import sign_request  # noqa: E402

STATE = {"charging": True, "idle": True, "wifi": True}
EXPECTED = {"heartbeat": {200}, "assignment": {200}, "download": {200}, "install_report": {202},
            "telemetry": {202}, "round": {200}, "update": {200}}


def _key(seed: bytes) -> SigningKey:
    return SigningKey(Ed25519PrivateKey.from_private_bytes(seed))


# ---- client side (one process per slice of devices) --------------------------------------------
class _Conn:
    """A keep-alive connection. gunicorn closes connections idle for more than its keepalive
    (2 s); a request that fails on such a reused connection before any response byte was
    never read by the server, so it is sent again once on a fresh one (as urllib3 does)."""

    def __init__(self, port: int) -> None:
        self.port, self.c, self.used = port, http.client.HTTPConnection("127.0.0.1", port, timeout=30), False
        self.reconnects = 0

    def send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in (0, 1):
            try:
                self.c.request(method, path, body=body, headers=headers)
                r = self.c.getresponse()
                self.used = True
                return r.status, r.read()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                stale = self.used and attempt == 0
                self._reset()
                if not stale:
                    raise
                self.reconnects += 1
            except (OSError, http.client.HTTPException):
                self._reset()
                raise
        raise AssertionError("unreachable")

    def _reset(self) -> None:
        self.c.close()
        self.c, self.used = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30), False


class _Device:
    def __init__(self, dev_id: str, seed: bytes) -> None:
        self.id, self.key, self.version, self.n, self.answered = dev_id, _key(seed), 1, 0, set()


def _client(port: int, devices: list[tuple[str, bytes]], threads: int, interval: float, t_end: float,
            max_requests: int, spread: float, out: Any, seed: int) -> None:
    from edgepack.federated._update import encode_plain

    lat: dict[str, list[float]] = defaultdict(list)
    status: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    errors: list[str] = []
    lock = threading.Lock()
    count = [0]
    rng = random.Random(seed)

    def call(conn: _Conn, kind: str, dev: _Device, method: str, path: str, body: bytes = b"",
             ctype: str = "application/json") -> tuple[int, bytes] | None:
        h = {"Content-Type": ctype, **sign_request(dev.key, dev.id, method, path, body)}
        t0 = time.perf_counter()
        try:
            st, data = conn.send(method, path, body if method == "POST" else None, h)
        except (OSError, http.client.HTTPException) as e:
            with lock:
                errors.append(f"{kind}: {type(e).__name__}: {e}")
            return None
        ms = (time.perf_counter() - t0) * 1000
        with lock:
            lat[kind].append(ms)
            status[kind][st] += 1
            count[0] += 1
            if st not in EXPECTED[kind] and not (kind == "update" and st == 422):
                errors.append(f"{kind}: HTTP {st} {data[:160]!r}")
        return st, data

    def checkin(conn: _Conn, dev: _Device) -> None:
        dev.n += 1
        base = f"/api/v1/devices/{dev.id}"
        call(conn, "heartbeat", dev, "POST", f"{base}/heartbeat",
             json.dumps({"active_version": dev.version, "state": STATE}).encode())
        res = call(conn, "assignment", dev, "GET", f"{base}/assignment")
        rel = json.loads(res[1]).get("release") if res and res[0] == 200 else None
        if rel and rel["version"] != dev.version:
            folder, name = rel["target"].rsplit("/", 1)
            got = call(conn, "download", dev, "GET", f"/tuf/targets/{folder}/{rel['sha256']}.{name}")
            if got and got[0] == 200:
                ok = hashlib.sha256(got[1]).hexdigest() == rel["sha256"]
                rep = {"kind": "install", "release_version": rel["version"], "ok": ok,
                       "reason": None if ok else "hash mismatch", "data": {}}
                if call(conn, "install_report", dev, "POST", f"{base}/reports", json.dumps(rep).encode()) and ok:
                    dev.version = rel["version"]
        if dev.n % 4 == 0:
            rep = {"kind": "telemetry", "release_version": dev.version, "ok": True,
                   "data": {"latency_ms": rng.uniform(1, 5), "requests": dev.n}}
            call(conn, "telemetry", dev, "POST", f"{base}/reports", json.dumps(rep).encode())
        if dev.n % 3 == 0:
            res = call(conn, "round", dev, "GET", f"{base}/round")
            rnd = json.loads(res[1]).get("round") if res and res[0] == 200 else None
            if rnd and rnd["round_id"] not in dev.answered:
                dev.answered.add(rnd["round_id"])
                delta = {"W": np.full((64, 10), rng.gauss(0, 0.01), np.float32),
                         "b": np.full(10, rng.gauss(0, 0.01), np.float32)}
                blob = encode_plain(dev.key, delta, round_id=rnd["round_id"], base_version=rnd["base_version"],
                                    device_id=dev.id, num_samples=rng.randint(10, 200))
                call(conn, "update", dev, "POST", f"{base}/rounds/{rnd['round_id']}/update", blob,
                     "application/octet-stream")

    reconnects = [0]

    def worker(mine: list[_Device]) -> None:
        conn = _Conn(port)
        try:
            _run(conn, mine)
        finally:
            with lock:
                reconnects[0] += conn.reconnects

    def _run(conn: _Conn, mine: list[_Device]) -> None:
        now = time.monotonic()
        heap = [(now + rng.uniform(0, spread), i) for i in range(len(mine))]
        heapq.heapify(heap)
        while heap:
            due, i = heapq.heappop(heap)
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if time.time() >= t_end or count[0] >= max_requests:
                return
            checkin(conn, mine[i])
            heapq.heappush(heap, (due + interval * rng.uniform(0.8, 1.2), i))

    devs = [_Device(d, s) for d, s in devices]
    ts = [threading.Thread(target=worker, args=(devs[k::threads],)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put({"lat": dict(lat), "status": {k: dict(v) for k, v in status.items()}, "errors": errors,
             "installed": sum(d.version == 2 for d in devs), "updates": sum(len(d.answered) for d in devs),
             "reconnects": reconnects[0]})


# ---- server side --------------------------------------------------------------------------------
def _rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _enroll_all(fleet: FleetProc, n: int) -> list[tuple[str, bytes]]:
    from concurrent.futures import ThreadPoolExecutor

    from support.server import http_json

    def one(i: int) -> tuple[str, bytes]:
        seed = os.urandom(32)
        key = _key(seed)
        st, doc = http_json("POST", f"{fleet.url}/api/v1/enroll", json.dumps(
            {"token": fleet.enrollment_token(), "public_key": key.public.raw.hex(), "name": f"sim{i}"}).encode(),
            {"Content-Type": "application/json"}, timeout=60)
        if st != 201:
            raise SystemExit(f"enrollment failed: {st} {doc}")
        return doc["device_id"], seed

    with ThreadPoolExecutor(8) as ex:
        return list(ex.map(one, range(n)))


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--max-requests", type=int, default=500_000, help="stop earlier after this many requests")
    ap.add_argument("--interval", type=float, default=30.0, help="seconds between one device's check-ins")
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--threads", type=int, default=12, help="threads per client process")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    ap.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    load0 = os.getloadavg()
    key = generate_key()
    with tempfile.TemporaryDirectory(prefix="edgepack-soak-") as tmp:
        work = Path(tmp)
        trust_file = work / "trust.json"
        Trust.of([key.public]).save(trust_file)
        # failure limits set explicitly high: every simulated device enrolls from 127.0.0.1
        env = {"EDGEPACK_FLEET_TICK_S": "1", "EDGEPACK_ENROLL_FAILURE_LIMIT": "1000000",
               "EDGEPACK_LOGIN_FAILURE_LIMIT": "1000000", "EDGEPACK_ADMIN_AUTH_FAILURE_LIMIT": "1000000"}
        fleet = FleetProc(work, trust_file, tuf=True, workers=args.workers, env=env)
        with fleet:
            assert fleet.admin("POST", "/releases", raw=linear_bundle(work, key, 1).read_bytes())[0] == 201
            t0 = time.perf_counter()
            devices = _enroll_all(fleet, args.devices)
            enroll_s = time.perf_counter() - t0
            v2 = linear_bundle(work, key, 2, report=200_000)
            print(f"enrolled {len(devices)} devices in {enroll_s:.1f} s; soak for {args.minutes} min",
                  file=sys.stderr)

            duration = args.minutes * 60
            t_start = time.time()
            t_end = t_start + duration
            q: Any = mp.get_context("fork").Queue()
            procs = [mp.get_context("fork").Process(target=_client, args=(
                fleet.server.port, devices[k::args.procs], args.threads, args.interval, t_end,
                args.max_requests // args.procs, min(args.interval, duration / 10), q, k)) for k in range(args.procs)]
            for p in procs:
                p.start()
            pids = fleet.server.pids()
            timeline: list[tuple[float, int]] = []
            events: list[str] = []
            rid = rollout_id = None
            results = []
            while len(results) < len(procs):
                el = time.time() - t_start
                timeline.append((el, _rss_kb(fleet.server.pids() or pids)))
                if rid is None and el >= 0.15 * duration:
                    st, doc = fleet.admin("POST", "/rounds", {
                        "model": "digits", "base_version": 1, "params": ["W", "b"], "fraction": 0.1,
                        "min_clients": 10, "deadline_s": 0.5 * duration})
                    rid = doc.get("id") if st == 201 else None
                    events.append(f"{el:5.0f} s: round {rid or doc} started, {len(doc.get('selected', []))} selected")
                    rid = rid or "failed"
                if rollout_id is None and el >= 0.25 * duration:
                    st, rel = fleet.admin("POST", "/releases", raw=v2.read_bytes())
                    st, doc = fleet.admin("POST", "/rollouts", {"release": rel["id"], "group": "default",
                                                                 "waves": [10, 50, 100], "gates": {"min_reports": 5}})
                    rollout_id = doc.get("id", "failed")
                    events.append(f"{el:5.0f} s: rollout {rollout_id} of v2 ({v2.stat().st_size} B) started")
                try:
                    results.append(q.get(timeout=args.sample_s))
                    continue
                except Exception:  # noqa: BLE001 (queue.Empty: nothing finished yet, keep sampling)
                    pass
            for p in procs:
                p.join(timeout=60)
            elapsed = time.time() - t_start
            timeline.append((elapsed, _rss_kb(fleet.server.pids() or pids)))
            rnd = fleet.admin("GET", f"/rounds/{rid}")[1] if rid and rid != "failed" else {}
            ro = fleet.admin("GET", f"/rollouts/{rollout_id}")[1] if rollout_id not in (None, "failed") else {}

    lat: dict[str, list[float]] = defaultdict(list)
    status: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    errors: list[str] = []
    for r in results:
        for k, v in r["lat"].items():
            lat[k] += v
        for k, v in r["status"].items():
            for s, n in v.items():
                status[k][int(s)] += n
        errors += r["errors"]
    allv = [x for v in lat.values() for x in v]
    total = len(allv) + sum(1 for e in errors if "HTTP" not in e)
    print(f"\nsoak: {args.devices} devices, {elapsed:.0f} s, {args.workers} gunicorn workers x 4 threads, "
          f"{args.procs} client procs x {args.threads} threads, check-in every ~{args.interval:.0f} s; "
          f"load average {load0[0]:.2f} before, {os.getloadavg()[0]:.2f} after; {os.cpu_count()} CPUs\n")
    print(f"requests {total}, throughput {total / elapsed:.1f} req/s, errors {len(errors)} "
          f"({100 * len(errors) / max(total, 1):.2f} %), idle keep-alive connections re-opened "
          f"{sum(r['reconnects'] for r in results)}")
    print(f"latency all: p50 {_pct(allv, 50):.1f} ms, p99 {_pct(allv, 99):.1f} ms, max {max(allv or [0]):.0f} ms\n")
    print("| request | count | p50 ms | p99 ms | statuses |")
    print("| --- | ---: | ---: | ---: | --- |")
    for k in EXPECTED:
        if lat.get(k):
            print(f"| {k} | {len(lat[k])} | {_pct(lat[k], 50):.1f} | {_pct(lat[k], 99):.1f} | "
                  f"{dict(sorted(status[k].items()))} |")
    print()
    for e in events:
        print(e)
    installed = sum(r["installed"] for r in results)
    print(f"rollout: state {ro.get('state')}, wave {ro.get('wave_index')}; devices on v2: {installed}/{args.devices}")
    print(f"round: state {rnd.get('state')}, selected {len(rnd.get('selected') or [])}, "
          f"accepted {len(rnd.get('accepted') or [])}, reason {rnd.get('reason')}; "
          f"updates sent {sum(r['updates'] for r in results)}")
    print("\nserver RSS (all gunicorn processes):")
    for t, kb in timeline[:: max(1, len(timeline) // 24)]:
        print(f"  {t:6.0f} s  {kb / 1024:7.1f} MB")
    verdict = None
    for name, lo, hi in (("first half", 0.0, elapsed / 2), ("second half", elapsed / 2, elapsed)):
        part = [(t, kb) for t, kb in timeline if lo <= t <= hi]
        if len(part) < 3:
            continue
        ts, ks = np.array([t for t, _ in part]), np.array([kb for _, kb in part]) / 1024
        slope = float(np.polyfit(ts, ks, 1)[0]) * 60
        fitted = slope * (hi - lo) / 60
        print(f"\nRSS {name}: mean {ks.mean():.1f} MB, {ks[0]:.1f} -> {ks[-1]:.1f} MB, slope {slope:+.2f} MB/min "
              f"({fitted:+.1f} MB over the {name})", end="")
        if name == "second half":
            # a leak grows with the requests served; warm-up (imports, caches, SQLite pages) ends early
            verdict = fitted < max(0.02 * ks.mean(), 5.0)
    print(f"\nverdict: {'bounded' if verdict else 'GROWING' if verdict is not None else 'too few samples'} "
          "(criterion: fitted growth over the second half < max(2 % of its mean, 5 MB))")
    for e in errors[:10]:
        print("ERROR:", e)
    if args.json:
        args.json.write_text(json.dumps({
            "devices": args.devices, "elapsed_s": elapsed, "requests": total, "errors": len(errors),
            "latency": {k: {"n": len(v), "p50": _pct(v, 50), "p99": _pct(v, 99)} for k, v in lat.items()},
            "rss_timeline_kb": timeline, "events": events, "round": rnd, "rollout": ro}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
