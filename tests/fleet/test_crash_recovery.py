"""Fault: SIGKILL the real server (gunicorn on 127.0.0.1) mid-rollout, restart it, and check that
every report it answered 202 for is stored and the rollout carries on to completion."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from sqlalchemy import create_engine, text
from support.server import CLI, Server, free_port, http_json

from edgepack import generate_key
from edgepack._device_auth import sign_request

pytestmark = pytest.mark.slow


_free_port, _http = free_port, http_json


class Dev:
    def __init__(self, url: str, device_id: str, key) -> None:
        self.url, self.id, self.key = url, device_id, key

    def call(self, method: str, path: str, body=None):
        data = json.dumps(body).encode() if body is not None else b""
        h = {"Content-Type": "application/json", **sign_request(self.key, self.id, method, path, data)}
        return _http(method, self.url + path, data if body is not None else None, h, timeout=5)

    def report(self, kind, version, ok=True, **data):
        return self.call("POST", f"/api/v1/devices/{self.id}/reports",
                         {"kind": kind, "release_version": version, "ok": ok, "data": data})


def test_sigkill_during_a_rollout_loses_no_accepted_report_and_the_rollout_continues(tmp_path, trust_file,
                                                                                       make_bundle):
    inst = tmp_path / "instance"
    out = subprocess.run([*CLI, "fleet", "init", "--instance", str(inst), "--release-trust", str(trust_file),
                          "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    token = json.loads(out.stdout)["admin_token"]
    auth = {"Authorization": f"Bearer {token}"}
    server = Server(inst, _free_port())
    server.start()
    try:
        url = server.url
        assert _http("POST", f"{url}/api/v1/admin/releases", make_bundle(1).read_bytes(), auth)[0] == 201
        devices = []
        for i in range(8):
            st, tok = _http("POST", f"{url}/api/v1/admin/enrollment-tokens", b"{}",
                            {**auth, "Content-Type": "application/json"})
            key = generate_key()
            st, body = _http("POST", f"{url}/api/v1/enroll",
                             json.dumps({"token": tok["token"], "public_key": key.public.raw.hex(),
                                         "name": f"d{i}"}).encode(), {"Content-Type": "application/json"})
            assert st == 201
            devices.append(Dev(url, body["device_id"], key))
        st, r = _http("POST", f"{url}/api/v1/admin/rollouts",
                      json.dumps({"release": {"name": "digits", "version": 1}, "group": "default",
                                  "waves": [50, 100], "gates": {"min_reports": 4}}).encode(),
                      {**auth, "Content-Type": "application/json"})
        assert st == 201
        rid = r["id"]

        accepted: list[int] = []
        stop = threading.Event()

        def stream() -> None:  # telemetry keeps arriving while the server dies
            seq = 0
            while not stop.is_set() and seq < 5000:
                seq += 1
                try:
                    if devices[seq % 8].report("telemetry", 1, seq=seq, latency_ms=5.0)[0] == 202:
                        accepted.append(seq)
                except (OSError, http.client.HTTPException, ValueError):  # the server is down or dying
                    time.sleep(0.05)

        t = threading.Thread(target=stream)
        t.start()
        time.sleep(1.0)
        server.kill()
        killed_at = len(accepted)
        time.sleep(0.3)
        server.start()
        resumed = len(accepted)
        wait_end = time.monotonic() + 10
        while len(accepted) < resumed + 20 and time.monotonic() < wait_end:
            time.sleep(0.1)
        stop.set()
        t.join(timeout=30)
        assert killed_at > 0 and len(accepted) > killed_at  # reports before and after the kill

        engine = create_engine(f"sqlite:///{inst / 'fleet.db'}")
        with engine.connect() as c:
            stored = {json.loads(d)["seq"] for (d,) in c.execute(text("SELECT data FROM reports WHERE kind='telemetry'"))}
        engine.dispose()
        missing = sorted(set(accepted) - stored)
        assert not missing, f"{len(missing)} accepted report(s) lost: {missing[:10]}"

        # the rollout continues where it was: wave 1, then wave 2, then completed
        st, r = _http("GET", f"{url}/api/v1/admin/rollouts/{rid}", headers=auth)
        assert r["state"] == "running" and r["wave_index"] == 0
        installed: set[str] = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # each device installs once it is assigned, as an agent would
            for d in devices:
                a = d.call("GET", f"/api/v1/devices/{d.id}/assignment")[1]
                if a["release"] and d.id not in installed:
                    assert d.report("install", 1)[0] == 202
                    installed.add(d.id)
            st, r = _http("GET", f"{url}/api/v1/admin/rollouts/{rid}", headers=auth)
            if r["state"] != "running":
                break
            time.sleep(0.2)
        assert [e["kind"] for e in r["events"]] == ["started", "wave", "completed"]
        assert r["state"] == "completed", r
    finally:
        if server.proc and server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGTERM)
            server.proc.wait(timeout=20)


def test_metrics_are_summed_over_gunicorn_workers(tmp_path):
    inst = tmp_path / "instance"
    assert subprocess.run([*CLI, "fleet", "init", "--instance", str(inst)], capture_output=True,
                          timeout=60).returncode == 0
    server = Server(inst, _free_port(), workers=2)
    server.start()
    try:
        for _ in range(20):  # a new connection each time, so both workers serve some
            assert _http("GET", f"{server.url}/healthz")[0] == 200
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as r:
            text = r.read().decode()
        line = next(x for x in text.splitlines()
                    if x.startswith('edgepack_http_requests_total{endpoint="healthz",status="200"}'))
        assert float(line.rsplit(" ", 1)[1]) >= 20  # start-up polls may add a few
    finally:
        os.killpg(server.proc.pid, signal.SIGTERM)
        server.proc.wait(timeout=20)
