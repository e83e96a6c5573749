"""Issue 5 item 8: the fleet server under load, on 127.0.0.1 only, every loop bounded.

A. Register ``--devices`` devices: one enrollment token per device from the admin API,
   then ``POST /api/v1/enroll`` (client processes; keys generated in the client).
B. Sustained signed check-ins (``POST .../heartbeat``) under gunicorn
   (``edgepack fleet serve --workers N --threads T``). Every request is signed *before*
   the timed phase (fresh nonce each, timestamp inside the server's 300 s window) and
   sent by Debian's ``wrk`` over ``--connections`` keep-alive connections
   (``_checkin_load.py``; a Python raw-socket fallback without wrk), so the client
   takes little of the 2 cores. Reports throughput, p50/p99, the load average, the
   server's CPU per check-in (gunicorn workers' utime+stime from /proc), the client's
   CPU, and the rate that CPU cost allows on 2 free cores; then a cProfile of
   heartbeats through the same app in this process (Flask test client).
C. Roll a ~5 MB release (an MLP trained on sklearn digits, as in bench_tuf.py) out to
   ``--rollout-devices`` simulated devices, then a fine-tuned parameter update of it
   (all layers, lr 1e-4, like RESULTS.md C) uploaded through
   ``POST /api/v1/admin/releases/<id>/params`` with full + delta. The simulated device
   is lighter than the agent: signed assignment, TUF refresh with ``tuf.ngclient``
   (``runtime.agent.TufClient``: signed metadata, resumable Range download, length and
   sha256 checked against TUF), install report; it does not install into an A/B store.
   Half of the devices take the delta (the agent's rule), half the full update, so bytes
   with and without deltas are both measured over HTTP.

Usage (about 3-5 minutes on 2 shared cores; the last line is a one-line SUMMARY):

    .venv/bin/python benchmarks/bench_fleet.py --workers 2 --procs 2 --threads 4

Only the check-in phase (devices written straight into the database; ~1 minute):

    .venv/bin/python benchmarks/bench_fleet.py --checkin-only
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import json
import multiprocessing as mp
import os
import platform
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgepack import BundleBuilder, SigningKey, Trust, generate_key, save_key_pair
from edgepack._device_auth import sign_request

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _checkin_load import WRK, presign_heartbeats, run_python, run_wrk  # noqa: E402

CLI = [sys.executable, "-c", "import sys; from edgepack.cli import main; sys.exit(main())"]
HB_BODY = b'{"active_version": 1, "state": {"charging": true, "idle": true, "wifi": true}}'


def _key(seed: bytes) -> SigningKey:
    return SigningKey(Ed25519PrivateKey.from_private_bytes(seed))


def _call(conn: http.client.HTTPConnection, method: str, path: str, body: bytes = b"",
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    return r.status, r.read()


def _pct(xs: list[float], q: float) -> float:
    return round(sorted(xs)[min(len(xs) - 1, int(len(xs) * q))] * 1000, 1) if xs else float("nan")


# ---- A: registration ------------------------------------------------------------------------
def _register(args: tuple[int, str, list[str]]) -> tuple[list[tuple[str, str, str]], list[float], int]:
    port, admin, groups = args
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out, lat, errors = [], [], 0
    ah = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    for group in groups:
        seed = os.urandom(32)
        t0 = time.perf_counter()
        st, d = _call(conn, "POST", "/api/v1/admin/enrollment-tokens", json.dumps({"group": group}).encode(), ah)
        if st != 201:
            errors += 1
            continue
        body = json.dumps({"token": json.loads(d)["token"], "public_key": _key(seed).public.raw.hex()}).encode()
        st, d = _call(conn, "POST", "/api/v1/enroll", body, {"Content-Type": "application/json"})
        lat.append(time.perf_counter() - t0)
        if st != 201:
            errors += 1
            continue
        out.append((json.loads(d)["device_id"], seed.hex(), group))
    return out, lat, errors


# ---- B: check-ins ---------------------------------------------------------------------------
def _enroll_direct(inst: Path, n: int, rollout: int) -> list[tuple[str, str, str]]:
    """--checkin-only: write ``n`` enrolled devices straight into the database (the rows
    ``POST /api/v1/enroll`` creates), in one transaction, so the check-in phase runs on its own."""
    import secrets

    from sqlalchemy import insert, select

    from fleet_server import load_config
    from fleet_server._db import Database
    from fleet_server._models import Device, Group

    db = Database(load_config(inst).db_url)
    out, rows, now = [], [], time.time()
    with db.write() as s:
        groups = {g.name: g.id for g in s.scalars(select(Group))}
        for i in range(n):
            seed, grp, did = os.urandom(32), "rollout" if i < rollout else "default", "d-" + secrets.token_hex(8)
            rows.append({"id": did, "name": "device", "public_key": _key(seed).public.raw.hex(), "tags": {},
                         "group_id": groups[grp], "status": "active", "enrolled_at": now, "state": {}})
            out.append((did, seed.hex(), grp))
        s.execute(insert(Device), rows)
    db.dispose()
    return out


def _checkin_phase(a: argparse.Namespace, port: int, master: int, pairs: list[tuple[str, str]],
                   tmp: Path) -> dict[str, Any]:
    """Pre-sign, then send for ``--checkin-seconds`` with wrk (or the Python fallback); server CPU from /proc."""
    client = a.client if a.client != "auto" else ("wrk" if WRK else "python")
    if client == "wrk" and not WRK:
        raise SystemExit("wrk is not installed: 'sudo apt-get install wrk' (or 'make system-deps'), "
                         "or pass --client python (costs more client CPU on the server's cores)")
    if client == "python":
        print("note: using the Python fallback client (no wrk): it competes harder for the server's cores",
              file=sys.stderr)
    req_dir = tmp / "reqs"
    req_dir.mkdir(exist_ok=True)
    parts = a.wrk_threads if client == "wrk" else a.procs
    n, sign_s = presign_heartbeats(pairs, int(a.max_rate * a.checkin_seconds), parts, port, req_dir)
    print(json.dumps({"B_presigned": n, "seconds": round(sign_s, 1)}), flush=True)
    pg = getattr(a, "pg_master", None)
    load0, cpu0, pg0 = os.getloadavg(), _worker_cpu(master), _worker_cpu(pg) if pg else 0.0
    if client == "wrk":
        r = run_wrk(port, req_dir, a.wrk_threads, a.connections, a.checkin_seconds)
    else:
        r = run_python(port, req_dir, a.procs, a.connections, a.checkin_seconds)
    cpu = _worker_cpu(master) - cpu0
    db_cpu = _worker_cpu(pg) - pg0 if pg else 0.0
    cpu += db_cpu
    shutil.rmtree(req_dir, ignore_errors=True)
    done, wall = r["requests"], r["wall_s"]
    errors = r["non200"] + r["errors_connect"] + r["errors_read"] + r["errors_write"] + r["errors_timeout"]
    server_ms, client_ms = cpu / done * 1000, r["client_cpu_s"] / done * 1000
    return {"client": client, "connections": a.connections, "requests": done, "errors": errors,
            "ran_out_of_presigned": r["ran_out_threads"], "seconds": round(wall, 1), "per_s": round(done / wall),
            "p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"], "p99_ms": r["p99_ms"], "max_ms": r["max_ms"],
            "server_cpu_ms_per_req": round(server_ms, 3), "client_cpu_ms_per_req": round(client_ms, 3),
            "of_which_postgresql_ms_per_req": round(db_cpu / done * 1000, 3) if pg else None,
            "server_cpu_share_of_2_cores": round(cpu / wall / 2, 2),
            "client_cpu_share_of_2_cores": round(r["client_cpu_s"] / wall / 2, 2),
            "projected_per_s_on_2_free_cores": round(2000 / (server_ms + client_ms)),
            "loadavg_before": load0, "loadavg_after": os.getloadavg()}


def _summary(b: dict[str, Any], a: argparse.Namespace) -> str:
    ok = b["per_s"] >= 1000 and b["p99_ms"] < 100 and b["errors"] == 0
    return (f"SUMMARY check-ins: {b['per_s']}/s, p50 {b['p50_ms']} ms, p99 {b['p99_ms']} ms, errors {b['errors']}"
            f" of {b['requests']} | server CPU {b['server_cpu_ms_per_req']} ms/check-in, client ({b['client']}) "
            f"{b['client_cpu_ms_per_req']} ms | projected on 2 free cores {b['projected_per_s_on_2_free_cores']}/s"
            f" | loadavg {b['loadavg_before'][0]:.2f} -> {b['loadavg_after'][0]:.2f} | "
            f"workers {a.workers} x {a.server_threads} threads | target >=1000/s p99<100ms: "
            f"{'MET' if ok else 'MISSED'}")


def _worker_cpu(master: int) -> float:
    """utime+stime (s) of a master process (gunicorn, or PostgreSQL's postmaster) and its children."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            f = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid = int(f[1])
        if int(p.name) == master or ppid == master:
            total += (int(f[11]) + int(f[12])) / tick
    return total


def _profile_heartbeat(inst: str, devices: list[tuple[str, str, str]], n: int = 300) -> tuple[float, str]:
    """CPU per heartbeat through the app in this process (no HTTP, no gunicorn), and its profile."""
    from fleet_server import create_app, load_config

    app = create_app(load_config(Path(inst)))
    client = app.test_client()
    keys = [(did, _key(bytes.fromhex(seed))) for did, seed, _ in devices[:n]]
    signed = []
    for did, key in keys:
        path = f"/api/v1/devices/{did}/heartbeat"
        signed.append((path, {"Content-Type": "application/json", **sign_request(key, did, "POST", path, HB_BODY)}))
    prof = cProfile.Profile()
    c0 = time.process_time()
    prof.enable()
    ok = sum(client.post(p, data=HB_BODY, headers=h).status_code == 200 for p, h in signed)
    prof.disable()
    cpu = (time.process_time() - c0) / len(signed)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
    assert ok == len(signed), f"only {ok}/{len(signed)} profiled heartbeats were accepted"
    return cpu, buf.getvalue()


# ---- C: rollout -----------------------------------------------------------------------------
def _mlp_onnx(ws: list[np.ndarray], bs: list[np.ndarray]) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, prev = [], [], "input"
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        last = i == len(ws) - 1
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], ["logits" if last else f"z{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i}"]))
        inits += [numpy_helper.from_array(w.astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"B{i}")]
        prev = "logits" if last else f"h{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def _models(tmp: Path, release_key: SigningKey, update_key: SigningKey) -> dict[str, Any]:
    """A ~5 MB MLP bundle (v1) and its all-layer fine-tune as .epu whole and delta-xor (v2)."""
    import torch
    from sklearn.datasets import load_digits

    from edgepack._params import encode_param_update

    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    net = torch.nn.Sequential(torch.nn.Linear(64, 1152), torch.nn.ReLU(), torch.nn.Linear(1152, 1024),
                              torch.nn.ReLU(), torch.nn.Linear(1024, 10))

    def train(epochs: int, lr: float, xs: torch.Tensor) -> None:
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(epochs):
            for i in range(0, len(xs), 128):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(xs[i:i + 128]), y[i:i + 128]).backward()
                opt.step()

    def weights() -> tuple[list[np.ndarray], list[np.ndarray]]:
        lin = [m for m in net if isinstance(m, torch.nn.Linear)]
        return [m.weight.detach().numpy().T.copy() for m in lin], [m.bias.detach().numpy().copy() for m in lin]

    train(3, 1e-3, x)
    bw, bb = weights()
    base = _mlp_onnx(bw, bb)
    b = BundleBuilder("mlp", 1, io={"inputs": [], "outputs": []})
    b.add_artifact("mlp.fp32.onnx", base, format="onnx", precision="fp32")
    bundle = b.write(tmp / "mlp-1.edgepack", [release_key])
    train(1, 1e-4, x + 0.1 * torch.randn_like(x))  # fine-tune on noisier inputs (device-side domain shift)
    nw, nb = weights()
    art = "artifacts/mlp.fp32.onnx"
    new = {art: {**{f"W{i}": w for i, w in enumerate(nw)}, **{f"B{i}": v for i, v in enumerate(nb)}}}
    enc = {e: encode_param_update(model="mlp", version=2, base_version=1, base_artifacts={art: ("onnx", base)},
                                  new_weights=new, keys=[update_key], encoding=e)[0] for e in ("whole", "delta-xor")}
    return {"bundle": bundle, "whole": enc["whole"], "delta": enc["delta-xor"]}


def _device_fetch(args: tuple[str, str, list[tuple[str, str]], bytes, str, int, bool]) -> dict[str, Any]:
    """Lighter simulated devices: signed assignment -> TUF refresh -> verified download -> report."""
    from runtime.agent import TufClient, delta_target_path

    url, state_root, devices, root, kind, threads, prefer_delta_even = args
    port = int(url.rsplit(":", 1)[1])
    lock = threading.Lock()
    res: dict[str, Any] = {"bytes": 0, "ok": 0, "errors": [], "refresh_s": [], "refresh_bytes": [],
                           "refresh_requests": [], "deltas": 0, "total_s": [], "bytes_delta": 0}

    def one(i: int, did: str, key: SigningKey) -> None:
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        path = f"/api/v1/devices/{did}/assignment"
        st, d = _call(conn, "GET", path, b"", sign_request(key, did, "GET", path, b""))
        rel = json.loads(d)["release"] if st == 200 else None
        if rel is None or rel["kind"] != kind:
            raise RuntimeError(f"{did}: assignment {st} {rel}")
        state = Path(state_root) / did

        def auth(method: str, p: str) -> dict[str, str]:
            return sign_request(key, did, method, p, b"")

        tuf = TufClient(state, url, root, auth=auth)
        rs = tuf.refresh()
        info = tuf.require_target(rel["target"])
        use_delta = False
        if kind == "params" and prefer_delta_even and i % 2 == 0:
            dinfo = tuf.target_info(delta_target_path(info.path, int(rel["base_version"])))
            if dinfo is not None and dinfo.length < info.length:
                info, use_delta = dinfo, True
        got = tuf.download(info)  # resumable (Range), length + sha256 checked against TUF
        rep = json.dumps({"kind": "install", "release_version": rel["version"], "ok": True, "reason": None,
                          "data": {"bytes_received": got.bytes_received, "delta": use_delta}}).encode()
        rpath = f"/api/v1/devices/{did}/reports"
        st, _ = _call(conn, "POST", rpath, rep, {"Content-Type": "application/json",
                                                 **sign_request(key, did, "POST", rpath, rep)})
        shutil.rmtree(state, ignore_errors=True)  # 1,000 x 5 MB must not fill the disk
        with lock:
            res["bytes"] += got.bytes_received
            res["ok"] += st == 202
            res["deltas"] += use_delta
            res["bytes_delta"] += got.bytes_received if use_delta else 0
            res["refresh_s"].append(rs.seconds)
            res["refresh_bytes"].append(rs.bytes)
            res["refresh_requests"].append(rs.requests)
            res["total_s"].append(time.perf_counter() - t0)

    keyed = [(i, did, _key(bytes.fromhex(seed))) for i, (did, seed) in devices]

    def run(tid: int) -> None:
        for i, did, key in keyed[tid::threads]:
            try:
                one(i, did, key)
            except Exception as e:  # noqa: BLE001 (counted and shown; the benchmark must finish)
                with lock:
                    res["errors"].append(f"{type(e).__name__}: {e}"[:200])

    ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return res


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rollout_state": None, "bytes": 0, "bytes_delta": 0, "ok": 0, "deltas": 0, "errors": [], "refresh_s": [], "refresh_bytes": [],
                           "refresh_requests": [], "total_s": []}
    for p in parts:
        for k, v in p.items():
            out[k] = out[k] + v if out[k] is not None else v
    return out


def _admin(port: int, admin: str, method: str, path: str, body: bytes, ctype: str = "application/json") -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    st, d = _call(conn, method, path, body, {"Authorization": f"Bearer {admin}", "Content-Type": ctype})
    if st >= 300:
        raise RuntimeError(f"{method} {path} -> {st}: {d[:300]!r}")
    return json.loads(d)


def _multipart(fields: dict[str, bytes]) -> tuple[bytes, str]:
    bnd = os.urandom(12).hex()
    out = b"".join(f"--{bnd}\r\nContent-Disposition: form-data; name=\"{n}\"; filename=\"{n}.epu\"\r\n"
                   f"Content-Type: application/octet-stream\r\n\r\n".encode() + v + b"\r\n" for n, v in fields.items())
    return out + f"--{bnd}--\r\n".encode(), f"multipart/form-data; boundary={bnd}"


def _rollout(port: int, admin: str, pool: Any, rel_id: int, kind: str, url: str, tmp: Path,
             devs: list[tuple[str, str]], root: bytes, procs: int, threads: int) -> dict[str, Any]:
    ro = _admin(port, admin, "POST", "/api/v1/admin/rollouts",
                json.dumps({"release": rel_id, "group": "rollout", "waves": [100]}).encode())
    idx = list(enumerate(devs))
    t0 = time.perf_counter()
    parts = pool.map(_device_fetch, [(url, str(tmp / "dev"), idx[p::procs], root, kind, threads, True)
                                     for p in range(procs)])
    r = _merge(parts)
    r["wall_s"] = time.perf_counter() - t0
    _admin(port, admin, "POST", "/api/v1/admin/rollouts/tick", b"{}")
    r["rollout_state"] = _admin(port, admin, "GET", f"/api/v1/admin/rollouts/{ro['id']}", b"")["state"]
    return r


def _rollout_phase(port: int, admin: str, pool: Any, url: str, tmp: Path, inst: Path, release_key: SigningKey,
                   devices: list[tuple[str, str, str]], root: bytes, a: argparse.Namespace) -> dict[str, Any]:
    """C: a 5 MB release, then the fine-tuned parameter update with and without its delta."""
    from edgepack import load_signing_key

    m = _models(tmp, release_key, load_signing_key(inst / "tuf" / "federated.key"))
    rel = _admin(port, admin, "POST", "/api/v1/admin/releases", m["bundle"].read_bytes(), "application/octet-stream")
    rdevs = [(d, s) for d, s, g in devices if g == "rollout"]
    r1 = _rollout(port, admin, pool, rel["id"], "bundle", url, tmp, rdevs, root, a.procs, a.threads)
    body, ctype = _multipart({"update": m["whole"], "delta": m["delta"]})
    prel = _admin(port, admin, "POST", f"/api/v1/admin/releases/{rel['id']}/params", body, ctype)
    r2 = _rollout(port, admin, pool, prel["id"], "params", url, tmp, rdevs, root, a.procs, a.threads)
    nd, nf = r2["deltas"], r2["ok"] - r2["deltas"]
    return {
        "devices": len(rdevs), "bundle_bytes": rel["size"], "epu_whole_bytes": len(m["whole"]),
        "epu_delta_bytes": len(m["delta"]),
        "bundle": {"ok": r1["ok"], "errors": len(r1["errors"]), "first_errors": r1["errors"][:3],
                   "wall_s": round(r1["wall_s"], 1), "MB_sent": round(r1["bytes"] / 1e6, 1),
                   "device_p50_s": round(float(np.median(r1["total_s"])), 3) if r1["total_s"] else None,
                   "rollout_state": r1["rollout_state"]},
        "params": {"ok": r2["ok"], "errors": len(r2["errors"]), "first_errors": r2["errors"][:3],
                   "wall_s": round(r2["wall_s"], 1), "rollout_state": r2["rollout_state"], "devices_delta": nd,
                   "devices_full": nf, "MB_sent_delta_devices": round(r2["bytes_delta"] / 1e6, 2),
                   "MB_sent_full_devices": round((r2["bytes"] - r2["bytes_delta"]) / 1e6, 2),
                   "per_device_delta_B": round(r2["bytes_delta"] / nd) if nd else None,
                   "per_device_full_B": round((r2["bytes"] - r2["bytes_delta"]) / nf) if nf else None},
        "tuf_refresh_device": {"p50_ms": _pct(r1["refresh_s"] + r2["refresh_s"], 0.5),
                               "p99_ms": _pct(r1["refresh_s"] + r2["refresh_s"], 0.99),
                               "requests_median": float(np.median(r1["refresh_requests"] or [0])),
                               "bytes_median": float(np.median(r1["refresh_bytes"] or [0]))},
        "loadavg": os.getloadavg(),
    }


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    ap.add_argument("--server-threads", type=int, default=4, help="threads per gunicorn worker")
    ap.add_argument("--procs", type=int, default=2, help="client processes (registration, rollout, Python client)")
    ap.add_argument("--threads", type=int, default=4, help="threads per client process (registration, rollout)")
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--rollout-devices", type=int, default=1_000)
    ap.add_argument("--checkin-seconds", type=float, default=20.0)
    ap.add_argument("--checkin-only", action="store_true",
                    help="only phase B: devices are written straight into the database, no rollout (~1 min)")
    ap.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                    help="check-in load generator (auto: wrk if installed)")
    ap.add_argument("--connections", type=int, default=16, help="keep-alive connections for the check-in phase")
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--max-rate", type=float, default=3000.0,
                    help="pre-signed check-ins per second of --checkin-seconds (must exceed the rate reached)")
    ap.add_argument("--no-profile", action="store_true", help="skip the in-process cProfile of heartbeats")
    ap.add_argument("--postgres", action="store_true",
                    help="run the server on a throwaway local PostgreSQL (tests/support/postgres.py) instead of SQLite")
    return ap.parse_args()


def _wait_healthy(port: int) -> None:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(300):  # bounded wait for gunicorn
        try:
            if _call(c, "GET", "/healthz")[0] == 200:
                return
        except OSError:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        time.sleep(0.1)
    raise RuntimeError("the server did not become healthy in 30 s")


def main() -> None:
    a = _args()
    stop_pg = None
    if a.postgres:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from support.postgres import start_postgres

        url, reason, stop_pg = start_postgres()
        if url is None:
            raise SystemExit(f"--postgres: {reason}")
        os.environ["EDGEPACK_DATABASE_URL"] = url  # fleet init, fleet serve and the direct enrollment
        # the PostgreSQL backends' CPU is server CPU too: its postmaster heads them
        a.pg_master = int((Path(url.split("host=", 1)[1]) / "data" / "postmaster.pid").read_text().split()[0])
    try:
        _run(a)
    finally:
        if stop_pg is not None:
            stop_pg()


def _run(a: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    inst = tmp / "instance"
    release_key, root_key = generate_key(), generate_key()
    Trust.of([release_key.public]).save(tmp / "trust.json")
    root_priv, _ = save_key_pair(root_key, tmp / "keys", "root")
    out = subprocess.run([*CLI, "fleet", "init", "--instance", str(inst), "--release-trust", str(tmp / "trust.json"),
                          "--tuf-root-key", str(root_priv), "--group", "default", "--group", "rollout", "--json"],
                         capture_output=True, text=True, check=True)
    admin = json.loads(out.stdout)["admin_token"]
    root = (inst / "tuf/repo/metadata/1.root.json").read_bytes()
    results: dict[str, Any] = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                           "python": platform.python_version()},
                               "date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
                               "command": " ".join(sys.argv), "args": vars(a), "loadavg_start": os.getloadavg()}
    devices: list[tuple[str, str, str]] = []
    if a.checkin_only:
        t0 = time.perf_counter()
        devices = _enroll_direct(inst, a.devices, a.rollout_devices)
        results["A_register"] = {"devices": len(devices), "direct_db_insert_s": round(time.perf_counter() - t0, 1)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [*CLI, "fleet", "serve", "--instance", str(inst), "--port", str(port), "--workers", str(a.workers),
           "--threads", str(a.server_threads)]
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 (closed when the server stops)
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ctx = mp.get_context("fork")
    try:
        _wait_healthy(port)
        with ctx.Pool(a.procs) as pool:
            if not a.checkin_only:  # A: registration over HTTP
                groups = ["rollout"] * a.rollout_devices + ["default"] * (a.devices - a.rollout_devices)
                t0 = time.perf_counter()
                parts = pool.map(_register, [(port, admin, groups[p::a.procs]) for p in range(a.procs)])
                reg_s = time.perf_counter() - t0
                devices = [d for p in parts for d in p[0]]
                lat = [x for p in parts for x in p[1]]
                results["A_register"] = {"devices": len(devices), "errors": sum(p[2] for p in parts),
                                         "seconds": round(reg_s, 1), "per_s": round(len(devices) / reg_s, 1),
                                         "p50_ms_token+enroll": _pct(lat, 0.5),
                                         "p99_ms_token+enroll": _pct(lat, 0.99), "loadavg": os.getloadavg()}
            print(json.dumps({"A_register": results["A_register"]}), flush=True)
            results["B_checkins"] = _checkin_phase(a, port, server.pid, [(d, s) for d, s, _ in devices], tmp)
            print(json.dumps({"B_checkins": results["B_checkins"]}), flush=True)
            if not a.checkin_only:
                results["C_rollout"] = _rollout_phase(port, admin, pool, url, tmp, inst, release_key, devices, root, a)
                print(json.dumps({"C_rollout": results["C_rollout"]}), flush=True)
    except BaseException:
        print((tmp / "server.log").read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    if not a.no_profile:  # after the server is gone so it does not compete for the 2 cores
        cpu_req, prof = _profile_heartbeat(str(inst), devices)
        results["B_profile"] = {"in_process_cpu_ms_per_heartbeat": round(cpu_req * 1000, 3)}
        print(prof)
    print(json.dumps(results, indent=1))
    print(_summary(results["B_checkins"], a) + (" | PostgreSQL" if a.postgres else " | SQLite"))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
