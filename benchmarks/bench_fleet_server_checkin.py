"""Signed check-ins (heartbeats) per second against `edgepack fleet serve` on 127.0.0.1.

Bounded: a fixed number of requests per client thread, loopback only, the server is
stopped at the end. Usage:

    python benchmarks/bench_fleet_server_checkin.py --workers 2 --clients 8 --requests 300
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from edgepack import generate_key
from edgepack._device_auth import sign_request

CLI = [sys.executable, "-c", "import sys; from edgepack.cli import main; sys.exit(main())"]


def _call(conn: http.client.HTTPConnection, method: str, path: str, body: bytes = b"",
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    return r.status, r.read()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=300, help="per client thread")
    ap.add_argument("--devices", type=int, default=50)
    a = ap.parse_args()
    inst = tempfile.mkdtemp(prefix="fleet-bench-")
    out = subprocess.run([*CLI, "fleet", "init", "--instance", inst, "--json"], capture_output=True, text=True,
                         check=True)
    token = json.loads(out.stdout)["admin_token"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([*CLI, "fleet", "serve", "--instance", inst, "--port", str(port), "--workers",
                               str(a.workers), "--threads", "4"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(100):
            try:
                if _call(c, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                time.sleep(0.1)
        devices = []
        for _ in range(a.devices):
            _, d = _call(c, "POST", "/api/v1/admin/enrollment-tokens", b"{}",
                         {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            key = generate_key()
            _, d = _call(c, "POST", "/api/v1/enroll",
                         json.dumps({"token": json.loads(d)["token"], "public_key": key.public.raw.hex()}).encode(),
                         {"Content-Type": "application/json"})
            devices.append((json.loads(d)["device_id"], key))
        lat: list[float] = []
        errors = [0]
        lock = threading.Lock()
        body = b'{"active_version": 1, "state": {"charging": true, "idle": true, "wifi": true}}'

        def client(wid: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            for n in range(a.requests):
                did, key = devices[(wid * a.requests + n) % len(devices)]
                path = f"/api/v1/devices/{did}/heartbeat"
                h = {"Content-Type": "application/json", **sign_request(key, did, "POST", path, body)}
                t0 = time.perf_counter()
                status, _ = _call(conn, "POST", path, body, h)
                with lock:
                    lat.append(time.perf_counter() - t0)
                    errors[0] += status != 200

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        lat.sort()
        print(json.dumps({"workers": a.workers, "clients": a.clients, "requests": len(lat), "errors": errors[0],
                          "per_s": round(len(lat) / elapsed), "p50_ms": round(lat[len(lat) // 2] * 1000, 1),
                          "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1),
                          "loadavg": os.getloadavg()}))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
