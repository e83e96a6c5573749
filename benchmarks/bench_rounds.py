"""Per-upload cost of a round on the fleet server vs the bare math it wraps.

Side by side in one run, for N uploads of a P-parameter float32 head:
  server: signed request -> validate -> load acc.state -> fold -> atomic save + fsync -> row commit
          (Flask test client, SQLite in a temp dir; no network)
  bare:   validate_update + fold_update in memory (edgepack.federated, no persistence)

Run: .venv/bin/python benchmarks/bench_rounds.py [--n 40] [--p 650 100000 1000000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _onnx(W: np.ndarray, b: np.ndarray) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
                          "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", W.shape[0]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", W.shape[1]])],
                          [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def run(n: int, p: int) -> dict[str, float]:
    from edgepack import BundleBuilder, Trust, generate_key
    from edgepack._device_auth import sign_request
    from edgepack.federated import (
        ParamSpec,
        RoundAccumulator,
        RoundContext,
        fold_update,
        validate_update,
    )
    from edgepack.federated._update import encode_plain
    from fleet_server import FleetConfig, create_app
    from fleet_server._bp_admin import create_admin_token

    rows = max(1, p // 10)
    W, b = np.zeros((rows, 10), np.float32), np.zeros(10, np.float32)
    rk = generate_key()
    with tempfile.TemporaryDirectory() as td:
        tdp = Path(td)
        Trust.of([rk.public]).save(tdp / "trust.json")
        bb = BundleBuilder("m", 1, io={"inputs": [{"name": "x", "shape": ["N", rows], "dtype": "float32"}],
                                       "outputs": [{"name": "y", "shape": ["N", 10], "dtype": "float32"}]})
        bb.add_artifact("model.onnx", _onnx(W, b), format="onnx", precision="fp32")
        bundle = bb.write(tdp / "m-1.edgepack", [rk])
        app = create_app(FleetConfig(instance_dir=tdp / "inst", database_url=f"sqlite:///{tdp / 'f.db'}",
                                     secret_key="s" * 48, release_trust=tdp / "trust.json", tick_interval_s=0,
                                     testing=True))
        c = app.test_client()
        fl = app.extensions["edgepack_fleet"]
        h = {"Authorization": f"Bearer {create_admin_token(fl.db, 'bench')}"}
        assert c.post("/api/v1/admin/releases", data=bundle.read_bytes(), headers=h,
                      content_type="application/octet-stream").status_code == 201
        devs = []
        for i in range(n):
            tok = c.post("/api/v1/admin/enrollment-tokens", json={}, headers=h).json["token"]
            k = generate_key()
            did = c.post("/api/v1/enroll", json={"token": tok, "public_key": k.public.raw.hex(), "name": f"d{i}"}).json["device_id"]
            body = b'{"state": {"charging": true, "idle": true, "wifi": true}}'
            c.post(f"/api/v1/devices/{did}/heartbeat", data=body, content_type="application/json",
                   headers=sign_request(k, did, "POST", f"/api/v1/devices/{did}/heartbeat", body))
            devs.append((did, k))
        rid = c.post("/api/v1/admin/rounds", json={"model": "m", "base_version": 1, "params": ["W", "b"],
                                                   "min_clients": n}, headers=h).json["id"]
        rng = np.random.default_rng(0)
        blobs = [encode_plain(k, {"W": rng.normal(0, .01, W.shape).astype(np.float32),
                                  "b": rng.normal(0, .01, 10).astype(np.float32)},
                              round_id=rid, base_version=1, device_id=d, num_samples=10) for d, k in devs]
        t0 = time.perf_counter()
        for (d, k), blob in zip(devs, blobs, strict=True):
            path = f"/api/v1/devices/{d}/rounds/{rid}/update"
            r = c.post(path, data=blob, content_type="application/octet-stream",
                       headers=sign_request(k, d, "POST", path, blob))
            assert r.status_code == 200, r.json
        server = (time.perf_counter() - t0) / n
        spec = ParamSpec.from_params({"W": W, "b": b})
        ctx, keys = RoundContext(rid, 1, spec), {d: k.public for d, k in devs}
        acc = RoundAccumulator(spec)
        t0 = time.perf_counter()
        for blob in blobs:
            u = validate_update(blob, ctx, keys, seen_update_ids=acc)
            fold_update(acc, u)
        bare = (time.perf_counter() - t0) / n
        fl.db.dispose()
    return {"p": p, "n": n, "blob_bytes": len(blobs[0]), "server_ms": server * 1e3, "bare_ms": bare * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--p", type=int, nargs="+", default=[650, 100_000, 1_000_000])
    a = ap.parse_args()
    print(f"{'params':>9} {'N':>4} {'blob KB':>8} {'server ms/upload':>17} {'bare ms/upload':>15} {'ratio':>6}")
    for p in a.p:
        r = run(a.n, p)
        print(f"{r['p']:>9} {r['n']:>4} {r['blob_bytes'] / 1024:>8.1f} {r['server_ms']:>17.2f} {r['bare_ms']:>15.2f} "
              f"{r['server_ms'] / r['bare_ms']:>6.1f}")
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
