"""Fault: SIGKILL the real server (gunicorn on 127.0.0.1) while devices upload round updates, restart
it, let devices retry, and check that every update is folded exactly once and the round completes
with the exact weighted mean."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
from sqlalchemy import create_engine, text
from support.server import CLI, Server, free_port, http_json

from edgepack import generate_key
from edgepack._device_auth import sign_request
from edgepack.federated import ParamSpec, RoundAccumulator
from edgepack.federated._update import encode_plain

N_DEVICES = 12


_free_port, _http = free_port, http_json


def _signed(url, key, dev_id, method, path, data: bytes, ctype="application/json"):
    h = {"Content-Type": ctype, **sign_request(key, dev_id, method, path, data)}
    return _http(method, url + path, data if method == "POST" else None, h, timeout=5)


def test_sigkill_mid_round_loses_no_accepted_update_counts_none_twice_and_the_round_completes(
        tmp_path, trust_file, base_bundle):
    inst = tmp_path / "instance"
    out = subprocess.run([*CLI, "fleet", "init", "--instance", str(inst), "--release-trust", str(trust_file),
                          "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    auth = {"Authorization": f"Bearer {json.loads(out.stdout)['admin_token']}"}
    jauth = {**auth, "Content-Type": "application/json"}
    server = Server(inst, _free_port())
    server.start()
    try:
        url = server.url
        assert _http("POST", f"{url}/api/v1/admin/releases", base_bundle.read_bytes(), auth)[0] == 201
        devices = []
        for i in range(N_DEVICES):
            tok = _http("POST", f"{url}/api/v1/admin/enrollment-tokens", b"{}", jauth)[1]["token"]
            key = generate_key()
            st, body = _http("POST", f"{url}/api/v1/enroll", json.dumps(
                {"token": tok, "public_key": key.public.raw.hex(), "name": f"d{i}"}).encode(),
                {"Content-Type": "application/json"})
            assert st == 201
            dev = (body["device_id"], key)
            hb = json.dumps({"active_version": 1, "state": {"charging": True, "idle": True, "wifi": True}}).encode()
            assert _signed(url, key, dev[0], "POST", f"/api/v1/devices/{dev[0]}/heartbeat", hb)[0] == 200
            devices.append(dev)
        env = {**os.environ, "EDGEPACK_ADMIN_TOKEN": auth["Authorization"].split()[1], "EDGEPACK_FLEET_URL": url}

        def fl(*argv: str) -> dict:
            p = subprocess.run([*CLI, "fl", *argv, "--json"], capture_output=True, text=True, timeout=60, env=env)
            assert p.returncode == 0, p.stderr
            return json.loads(p.stdout)

        rnd = fl("start", "--model", "digits", "--base-version", "1", "--params", "W,b", "--min-clients",
                 str(N_DEVICES), "--deadline-s", "600")
        assert len(rnd["selected"]) == N_DEVICES
        rid = rnd["id"]
        rng = np.random.default_rng(7)
        deltas = [{"W": rng.normal(0, 0.01, (64, 10)).astype(np.float32),
                   "b": rng.normal(0, 0.01, 10).astype(np.float32)} for _ in devices]
        ns = [int(x) for x in rng.integers(10, 200, N_DEVICES)]
        blobs = [encode_plain(k, x, round_id=rid, base_version=1, device_id=d, num_samples=n)
                 for (d, k), x, n in zip(devices, deltas, ns, strict=True)]
        acked: set[int] = set()

        def upload(i: int) -> bool:
            d, k = devices[i]
            try:
                st, body = _signed(url, k, d, "POST", f"/api/v1/devices/{d}/rounds/{rid}/update", blobs[i],
                                   "application/octet-stream")
            except (OSError, http.client.HTTPException, ValueError):
                return False
            assert st == 200, body
            acked.add(i)
            return True

        def stream() -> None:  # uploads keep arriving while the server dies
            for i in range(N_DEVICES):
                upload(i)

        t = threading.Thread(target=stream)
        t.start()
        while len(acked) < 4 and t.is_alive():
            time.sleep(0.005)
        server.kill()
        t.join(timeout=60)
        killed_with = set(acked)
        assert 0 < len(killed_with) < N_DEVICES  # the kill landed mid-round
        server.start()
        for i in range(N_DEVICES):  # devices retry every upload they did not see acknowledged
            if i not in acked:
                assert upload(i)
        for i in sorted(killed_with)[:2]:  # and a retry of an acknowledged one is not counted again
            d, k = devices[i]
            st, body = _signed(url, k, d, "POST", f"/api/v1/devices/{d}/rounds/{rid}/update", blobs[i],
                               "application/octet-stream")
            assert st == 200 and body["already_counted"] is True

        spec = ParamSpec.from_params(deltas[0])
        acc = RoundAccumulator.load(inst / "rounds" / rid / "acc.state", spec)
        ids = {json.loads(blobs[i][12:12 + int.from_bytes(blobs[i][8:12], "little")])["signed"]["update_id"]
               for i in range(N_DEVICES)}
        assert sorted(acc.accepted_ids) == sorted(ids) and acc.count == N_DEVICES
        engine = create_engine(f"sqlite:///{inst / 'fleet.db'}")
        with engine.connect() as c:
            rows = [u for (u,) in c.execute(text(
                "SELECT update_id FROM fl_updates WHERE status='accepted' AND round_id=:r"), {"r": rid})]
        engine.dispose()
        assert sorted(rows) == sorted(ids)  # every update recorded exactly once

        assert fl("status", rid)["state"] == "open"
        st, closed = _http("POST", f"{url}/api/v1/admin/rounds/{rid}/close", b"{}", jauth)
        assert st == 200 and closed["state"] == "closed" and closed["result"]["accepted"] == N_DEVICES
        status = fl("status", rid)
        assert status["state"] == "closed" and len(status["accepted"]) == N_DEVICES
        assert [r["id"] for r in fl("history", "--model", "digits")["rounds"]] == [rid]
        bad = subprocess.run([*CLI, "fl", "status", "r-nope"], capture_output=True, text=True, timeout=60, env=env)
        assert bad.returncode == 12 and "404" in bad.stderr
        cand = np.load(inst / "rounds" / rid / "candidate.npz")
        base = np.load(inst / "rounds" / rid / "global.npz")
        for name in ("W", "b"):
            want = base[name].astype(np.float64) + sum(n * x[name].astype(np.float64)
                                                       for x, n in zip(deltas, ns, strict=True)) / sum(ns)
            np.testing.assert_allclose(cand[name], want.astype(np.float32), rtol=0, atol=1e-6)
    finally:
        if server.proc and server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGTERM)
            server.proc.wait(timeout=20)
