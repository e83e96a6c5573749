"""Fault-injection scenarios on real parts, shared by tests/faults (one injection each,
asserting zero problems) and benchmarks/faults.py (many injections at random points).

Each scenario starts a real fleet server (gunicorn, SQLite, 127.0.0.1) or a real
device agent in its own process, SIGKILLs it at a point drawn from ``rng``,
restarts it, and then checks the invariants. It returns an ``Outcome`` whose
``problems`` are strings starting ``loss:`` (something a client got a 2xx for is
gone) or ``inconsistent:`` (state that disagrees with itself or with what clients
were told), so a test asserts ``outcome.problems == []`` and the benchmark counts them.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepack import (
    BundleBuilder,
    SigningKey,
    Trust,
    generate_key,
    load_trust,
    save_key_pair,
    verify_bundle,
)
from edgepack._device_auth import sign_request

from .models import onnx_linear, softmax_regression
from .proxy import TargetProxy
from .server import CLI, Server, free_port, http_json

__all__ = ["Device", "FleetProc", "Outcome", "agent_download_kill", "committed_transactions", "digits_data",
           "disk_full", "install_kill", "linear_bundle", "random_bundle", "round_close_kill", "training_kill",
           "upload_kill", "wal_damage", "wal_snapshot"]


@dataclass
class Outcome:
    kind: str
    injected: int = 0
    mid: int = 0  #: injections that landed before the client had its answer
    problems: list[str] = field(default_factory=list)
    devices: int = 0
    verified: int = 0  #: devices that ended on a model that verifies and passes its golden check

    @property
    def data_loss(self) -> int:
        return sum(p.startswith("loss:") for p in self.problems)

    @property
    def inconsistent(self) -> int:
        return sum(p.startswith("inconsistent:") for p in self.problems)


class Device:
    """A simulated device: its own Ed25519 key, every request signed."""

    def __init__(self, url: str, device_id: str, key: SigningKey) -> None:
        self.url, self.id, self.key = url, device_id, key

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             timeout: float = 10) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        ctype = "application/octet-stream" if raw is not None else "application/json"
        h = {"Content-Type": ctype, **sign_request(self.key, self.id, method, path, data)}
        return http_json(method, self.url + path, data if method == "POST" else None, h, timeout=timeout)


class FleetProc:
    """``edgepack fleet init`` (optionally with a TUF root) + ``fleet serve`` in a subprocess."""

    def __init__(self, work: Path, trust_file: Path, *, tuf: bool = False, workers: int = 1,
                 env: dict[str, str] | None = None) -> None:
        self.inst = work / "instance"
        cmd = [*CLI, "fleet", "init", "--instance", str(self.inst), "--release-trust", str(trust_file), "--json"]
        if tuf:
            priv, _ = save_key_pair(generate_key(), work / "offline-root", "root")
            cmd += ["--tuf-root-key", str(priv)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise AssertionError(f"fleet init failed: {out.stderr}")
        self.token = json.loads(out.stdout)["admin_token"]
        self.server = Server(self.inst, free_port(), workers=workers, env=env)
        self.url = self.server.url

    @property
    def tuf_root(self) -> Path:
        return self.inst / "tuf" / "repo" / "metadata" / "1.root.json"

    def admin(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
              timeout: float = 30) -> tuple[int, Any]:
        h = {"Authorization": f"Bearer {self.token}"}
        data = raw
        if raw is None and body is not None:
            data, h["Content-Type"] = json.dumps(body).encode(), "application/json"
        return http_json(method, f"{self.url}/api/v1/admin{path}", data, h, timeout=timeout)

    def enrollment_token(self, group: str = "default") -> str:
        st, doc = self.admin("POST", "/enrollment-tokens", {"group": group})
        assert st == 201, doc
        return doc["token"]

    def enroll(self, name: str) -> Device:
        key = generate_key()
        st, doc = http_json("POST", f"{self.url}/api/v1/enroll", json.dumps(
            {"token": self.enrollment_token(), "public_key": key.public.raw.hex(), "name": name}).encode(),
            {"Content-Type": "application/json"})
        assert st == 201, doc
        return Device(self.url, doc["device_id"], key)

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(self.inst / "fleet.db", timeout=30)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def integrity(self, out: Outcome) -> None:
        res = self.rows("PRAGMA integrity_check")
        if res != [("ok",)]:
            out.problems.append(f"inconsistent: PRAGMA integrity_check says {res[:3]}")

    def __enter__(self) -> FleetProc:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


# ---- bundles and data ------------------------------------------------------------------------
def random_bundle(out: Path, key: SigningKey, version: int, size: int, name: str = "digits") -> Path:
    """A signed bundle around random bytes (the server verifies signatures and hashes, never runs it)."""
    b = BundleBuilder(name, version, io={"inputs": [{"name": "x", "shape": [1, 64], "dtype": "float32"}]})
    b.add_artifact("model.onnx", os.urandom(size), format="onnx", precision="fp32")
    return b.write(out / f"{name}-{version}-{os.urandom(4).hex()}.edgepack", [key])


def digits_data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target


def linear_bundle(out: Path, key: SigningKey, version: int = 1, report: int = 0, steps: int = 3) -> Path:
    """A real digits classifier (softmax regression, ONNX) with golden outputs for the health check."""
    import onnxruntime as ort

    x, y = digits_data()
    model = onnx_linear(*softmax_regression(x, y, steps))
    gx = x[:4]
    gy = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": gx})[0]
    buf = io.BytesIO()
    np.savez(buf, in__x=gx, out__logits=gy, **{"model.onnx__logits": gy})
    bb = BundleBuilder("digits", version, io={
        "task": "classification", "labels": [str(i) for i in range(10)],
        "inputs": [{"name": "x", "shape": ["N", 64], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": ["N", 10], "dtype": "float32"}]})
    bb.add_artifact("model.onnx", model, format="onnx", precision="fp32")
    bb.set_golden(buf.getvalue())
    if report:
        bb.add_report("calibration.bin", os.urandom(report))  # incompressible: a download that takes a while
    return bb.write(out / f"digits-{version}.edgepack", [key])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- server SIGKILL during a bundle upload ---------------------------------------------------
def _upload_slowly(url: str, token: str, bundle: Path, chunk: int = 128 << 10, pause: float = 0.01) -> int:
    """POST the bundle in chunks, so the kill can land while the server is still spooling it."""
    data = bundle.read_bytes()
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("POST", "/api/v1/admin/releases")
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(len(data)))
        conn.endheaders()
        for i in range(0, len(data), chunk):
            conn.send(data[i:i + chunk])
            time.sleep(pause)
        return conn.getresponse().status
    finally:
        conn.close()


def _check_releases(fleet: FleetProc, trust: Trust, acked: dict[int, str], out: Outcome) -> dict[int, str]:
    rows = fleet.rows("SELECT version, sha256, storage_key FROM releases WHERE kind='bundle'")
    present = {v: s for v, s, _ in rows}
    for v, sha in acked.items():
        if present.get(v) != sha:
            out.problems.append(f"loss: release v{v} was answered 201 but is {'gone' if v not in present else 'other'}")
    store = fleet.inst / "artifacts"
    for v, sha, key in rows:
        p = store / key
        if not p.is_file() or _sha(p) != sha:
            out.problems.append(f"inconsistent: release v{v} row without its exact artifact ({key})")
            continue
        try:
            verify_bundle(p, trust)
        except Exception as e:  # noqa: BLE001 (any failure here is the finding)
            out.problems.append(f"inconsistent: stored release v{v} does not verify: {e}")
    left = list((fleet.inst / "tmp").glob("*.upload")) + [p for p in store.rglob("*.tmp")] + \
        list((store / ".tmp").glob("*"))
    if left:
        out.problems.append(f"inconsistent: partial files left after restart: {[p.name for p in left]}")
    return present


def upload_kill(work: Path, trust_file: Path, key: SigningKey, rng: random.Random, *, kills: int = 1,
                size: int = 6 << 20) -> Outcome:
    """SIGKILL the server while a bundle upload streams in (spool, verify, store, commit)."""
    out = Outcome("server SIGKILL during upload")
    trust = load_trust(trust_file)
    fleet = FleetProc(work, trust_file)
    with fleet:
        first = random_bundle(work, key, 1, 4096)
        st, _ = fleet.admin("POST", "/releases", raw=first.read_bytes())
        assert st == 201
        acked = {1: _sha(first)}
        for i in range(kills):
            version = i + 2
            bundle = random_bundle(work, key, version, size)
            status: list[int] = []

            def send(b: Path = bundle, status: list[int] = status) -> None:
                with contextlib.suppress(OSError, http.client.HTTPException):  # the server died under it
                    status.append(_upload_slowly(fleet.url, fleet.token, b))

            t = threading.Thread(target=send)
            t.start()
            time.sleep(rng.uniform(0.0, 0.6))
            out.mid += not status
            fleet.server.kill()
            out.injected += 1
            t.join(timeout=60)
            if status == [201]:
                acked[version] = _sha(bundle)
            fleet.server.start()
            present = _check_releases(fleet, trust, acked, out)
            _check_orphans(fleet, out)  # swept at start-up, before the client even retries
            st, doc = fleet.admin("POST", "/releases", raw=bundle.read_bytes())  # the client retries
            if version in present:
                if st != 409:
                    out.problems.append(f"inconsistent: re-upload of committed v{version} got {st}, not 409")
            elif st != 201:
                out.problems.append(f"inconsistent: retried upload of v{version} got {st}: {doc}")
            acked[version] = _sha(bundle)
            _check_releases(fleet, trust, acked, out)
            _check_orphans(fleet, out)
            fleet.integrity(out)
    return out


def _check_orphans(fleet: FleetProc, out: Outcome) -> None:
    referenced = {k for (k,) in fleet.rows("SELECT storage_key FROM releases")}
    stored = {p.relative_to(fleet.inst / "artifacts").as_posix() for p in
              (fleet.inst / "artifacts" / "releases").rglob("*.edgepack")}
    if stored - referenced:
        out.problems.append(f"inconsistent: artifacts without a release: {sorted(stored - referenced)}")


# ---- server SIGKILL during round close -------------------------------------------------------
def round_close_kill(work: Path, trust_file: Path, key: SigningKey, rng: random.Random, *,
                     n_devices: int = 6, window_s: float = 0.25) -> Outcome:
    """SIGKILL the server while it closes a round (aggregate, evaluate, sign, publish)."""
    from edgepack.federated._update import encode_plain

    out = Outcome("server SIGKILL during round close")
    fleet = FleetProc(work, trust_file, tuf=True)
    x, y = digits_data()
    np.savez(work / "eval.npz", x=x[1200:], y=y[1200:])
    with fleet:
        assert fleet.admin("POST", "/releases", raw=linear_bundle(work, key).read_bytes())[0] == 201
        devices = [fleet.enroll(f"d{i}") for i in range(n_devices)]
        for d in devices:
            st, _ = d.call("POST", f"/api/v1/devices/{d.id}/heartbeat",
                           {"active_version": 1, "state": {"charging": True, "idle": True, "wifi": True}})
            assert st == 200
        st, rnd = fleet.admin("POST", "/rounds", {
            "model": "digits", "base_version": 1, "params": ["W", "b"], "min_clients": n_devices,
            "deadline_s": 600, "evaluation": {"path": str(work / "eval.npz"), "threshold": 1.0}})
        assert st == 201, rnd
        rid = rnd["id"]
        nrng = np.random.default_rng(rng.randrange(1 << 30))
        deltas = [{"W": nrng.normal(0, 0.01, (64, 10)).astype(np.float32),
                   "b": nrng.normal(0, 0.01, 10).astype(np.float32)} for _ in devices]
        ns = [int(v) for v in nrng.integers(10, 200, n_devices)]
        for d, delta, n in zip(devices, deltas, ns, strict=True):
            blob = encode_plain(d.key, delta, round_id=rid, base_version=1, device_id=d.id, num_samples=n)
            st, body = d.call("POST", f"/api/v1/devices/{d.id}/rounds/{rid}/update", raw=blob)
            assert st == 200 and body["accepted"], body
        closed: list[int] = []

        def close() -> None:
            with contextlib.suppress(OSError, http.client.HTTPException):  # the server died under it
                closed.append(fleet.admin("POST", f"/rounds/{rid}/close", {})[0])

        t = threading.Thread(target=close)
        t.start()
        time.sleep(rng.uniform(0.0, window_s))
        out.mid += not closed
        fleet.server.kill()
        out.injected += 1
        t.join(timeout=60)
        fleet.server.start()
        st, doc = fleet.admin("POST", f"/rounds/{rid}/close", {})  # the operator retries
        if st not in (200, 409):
            out.problems.append(f"inconsistent: retrying close answered {st}: {doc}")
        st, status = fleet.admin("GET", f"/rounds/{rid}")
        if status.get("state") != "closed":
            out.problems.append(f"inconsistent: round is {status.get('state')} after a retried close: "
                                f"{status.get('reason')}")
        result = status.get("result") or {}
        if result.get("accepted") != n_devices or len(status.get("accepted") or []) != n_devices:
            out.problems.append(f"loss: {n_devices} updates were accepted, the closed round counts "
                                f"{result.get('accepted')}")
        params = fleet.rows("SELECT version FROM releases WHERE name='digits' AND kind='params'")
        if result.get("promoted") and (params != [(2,)] or result.get("release") == "pending"):
            out.problems.append(f"inconsistent: promoted round published {params} (result {result.get('release')})")
        cand = np.load(fleet.inst / "rounds" / rid / "candidate.npz")
        base = np.load(fleet.inst / "rounds" / rid / "global.npz")
        for name in ("W", "b"):
            want = base[name].astype(np.float64) + sum(
                n * d[name].astype(np.float64) for d, n in zip(deltas, ns, strict=True)) / sum(ns)
            if not np.allclose(cand[name], want.astype(np.float32), rtol=0, atol=1e-6):
                out.problems.append(f"inconsistent: candidate {name} is not the fold of the accepted updates")
        fleet.integrity(out)
    return out


# ---- device agent SIGKILL during a download --------------------------------------------------
def _device_run(server: str, state: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, "device", "run", "--server", server, "--state", str(state), "--max-steps", "1",
                             "--poll-interval", "1", "--json", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _verified(state: Path, trust: Trust, version: int, out: Outcome, *, final: bool = True) -> None:
    """Check the device at ``state`` runs a verified ``version``; ``final`` counts it in the tally."""
    import runtime

    out.devices += final
    try:
        model = runtime.InstallStore(state, trust).load_active(allow_fallback=False)
        ok = model.version == version and runtime.health_check(model).ok
    except Exception as e:  # noqa: BLE001 (any failure here is the finding)
        out.problems.append(f"inconsistent: the device's active model does not load: {e}")
        return
    if ok:
        out.verified += final
    else:
        out.problems.append(f"inconsistent: the device runs v{model.version}, expected a verified v{version}")


def agent_download_kill(work: Path, trust_file: Path, key: SigningKey, rng: random.Random, *,
                        report: int = 1_500_000, throttle_bps: float = 1_000_000) -> Outcome:
    """SIGKILL ``edgepack device run`` while it downloads a release; the restart resumes with Range."""
    out = Outcome("agent SIGKILL during download")
    trust = load_trust(trust_file)
    fleet = FleetProc(work, trust_file, tuf=True)
    with fleet:
        bundle = linear_bundle(work, key, report=report)
        st, rel = fleet.admin("POST", "/releases", raw=bundle.read_bytes())
        assert st == 201, rel
        state = work / "device"
        first = _device_run(fleet.url, state, "--trust", str(trust_file), "--tuf-root", str(fleet.tuf_root),
                            "--enroll-token", fleet.enrollment_token(), "--name", "d0")
        assert first.communicate(timeout=120)[0] and first.returncode == 0  # enrolled, nothing assigned yet
        st, doc = fleet.admin("POST", "/rollouts", {"release": rel["id"], "group": "default", "waves": [100]})
        assert st == 201, doc
        proxy = TargetProxy(("127.0.0.1", fleet.server.port), throttle_bps=throttle_bps)
        p = _device_run(proxy.url, state)
        try:
            deadline = time.monotonic() + 60
            part = None
            while time.monotonic() < deadline and p.poll() is None:
                part = next((state / "downloads").glob("*.part"), None) if (state / "downloads").exists() else None
                if part is not None and part.stat().st_size > 0:
                    break
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.8 * report / throttle_bps))
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                out.injected += 1
                out.mid += 1
        finally:
            if p.poll() is None:  # the test failed before the kill: never leave the agent running
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate(timeout=30)
            proxy.close()
        parts = list((state / "downloads").glob("*.part")) if (state / "downloads").exists() else []
        kept = parts[0].stat().st_size if parts else 0
        again = _device_run(fleet.url, state)
        try:
            stdout, stderr = again.communicate(timeout=120)
        finally:
            if again.poll() is None:
                os.killpg(again.pid, signal.SIGKILL)
                again.communicate(timeout=30)
        if again.returncode != 0:
            out.problems.append(f"inconsistent: the restarted agent failed: {stderr.strip()[-300:]}")
            return out
        res = json.loads(stdout)
        facts = res.get("last_delivery") or {}
        if res["active_version"] != 1:
            out.problems.append(f"inconsistent: after restart the device runs {res['active_version']}, not v1")
        elif kept and facts.get("resumed_from") != kept:
            out.problems.append(f"inconsistent: {kept} bytes were on disk, the restart resumed from "
                                f"{facts.get('resumed_from')}")
        _verified(state / "store", trust, 1, out)
        reports = fleet.rows("SELECT count(*) FROM reports WHERE kind='install' AND ok=1")
        if reports != [(1,)]:
            out.problems.append(f"inconsistent: {reports[0][0]} successful install reports, expected exactly 1")
        fleet.integrity(out)
    return out


# ---- device SIGKILL during local training ----------------------------------------------------
TRAIN_CHILD = r"""
import json, sys
from pathlib import Path
import numpy as np
import edgepack, runtime
from runtime._train import TrainConfig
import runtime.agent._federated as fed
from runtime.agent._federated import participate
from runtime.agent._http import FleetClient
url, state, dev_id, key_path, trust_path, epochs = sys.argv[1:7]
real_train = fed.train_local
def traced(*a, **kw):  # tell the parent exactly when training runs, so its kill lands inside
    print("training", flush=True)
    out = real_train(*a, **kw)
    print("trained", flush=True)
    return out
fed.train_local = traced
model = runtime.InstallStore(Path(state) / "store", edgepack.load_trust(trust_path)).load_active()
key = edgepack.load_signing_key(key_path)
from sklearn.datasets import load_digits
d = load_digits()
x, y = (d.data[:400] / 16.0).astype(np.float32), d.target[:400]
out = participate(FleetClient(url), dev_id, key, state, model, x, y,
                  conditions=lambda: {"charging": True, "idle": True, "wifi": True},
                  train_config=TrainConfig(epochs=int(epochs)))
print(json.dumps({k: out[k] for k in ("status", "round_id", "reason") if k in out}), flush=True)
"""


def training_kill(work: Path, trust_file: Path, key: SigningKey, rng: random.Random, *,
                  epochs: int = 600, after_upload: float = 0.1) -> Outcome:
    """SIGKILL a device process while it trains for a round (or, with probability ``after_upload``,
    just after its upload); the restart uploads exactly once."""
    import runtime
    from runtime._train import TrainConfig, train_local

    out = Outcome("device SIGKILL during local training")
    trust = load_trust(trust_file)
    fleet = FleetProc(work, trust_file)
    with fleet:
        bundle = linear_bundle(work, key)
        assert fleet.admin("POST", "/releases", raw=bundle.read_bytes())[0] == 201
        dev = fleet.enroll("trainer")
        st, _ = dev.call("POST", f"/api/v1/devices/{dev.id}/heartbeat",
                         {"active_version": 1, "state": {"charging": True, "idle": True, "wifi": True}})
        assert st == 200
        st, rnd = fleet.admin("POST", "/rounds", {"model": "digits", "base_version": 1, "params": ["W", "b"],
                                                   "min_clients": 1, "deadline_s": 600})
        assert st == 201, rnd
        state = work / "device"
        runtime.InstallStore(state / "store", trust).install(bundle).raise_for_status()
        key_path, _ = save_key_pair(dev.key, state, "device")
        x, y = digits_data()
        t0 = time.perf_counter()  # how long training takes on this machine now: the kill lands inside it
        train_local(runtime.InstallStore(state / "store", trust).load_active(), x[:400], y[:400],
                    config=TrainConfig(epochs=epochs))
        window_s = time.perf_counter() - t0
        argv = [sys.executable, "-c", TRAIN_CHILD, fleet.url, str(state), dev.id, str(key_path), str(trust_file),
                str(epochs)]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None and p.stdout.readline().strip() == "training"
            if rng.random() < after_upload:
                assert p.stdout.readline().strip() == "trained"
                time.sleep(rng.uniform(0.0, 0.2))  # during the upload, or just after it
            else:
                time.sleep(window_s * rng.uniform(0.05, 0.6))
            if p.poll() is None:
                p.kill()
                out.injected += 1
                out.mid += 1
        finally:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)
        again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if again.returncode != 0:
            out.problems.append(f"inconsistent: the restarted device failed: {again.stderr.strip()[-300:]}")
        else:
            res = json.loads(again.stdout.splitlines()[-1])
            if res["status"] not in ("uploaded", "no_round"):
                out.problems.append(f"inconsistent: the restarted device's round status is {res}")
        rows = fleet.rows("SELECT status, reason FROM fl_updates WHERE device_id=? AND round_id=?",
                          (dev.id, rnd["id"]))
        accepted = [r for r in rows if r[0] == "accepted"]
        if len(accepted) != 1:
            out.problems.append(f"{'loss' if not accepted else 'inconsistent'}: {len(accepted)} accepted "
                                f"update(s) from the device, expected exactly 1 ({rows})")
        _verified(state / "store", trust, 1, out)
        fleet.integrity(out)
    return out


# ---- device SIGKILL during an install (the long test is tests/runtime/test_crash.py) ----------
INSTALL_CHILD = r"""
import sys
import edgepack, runtime
state, v2, trust_path = sys.argv[1:4]
store = runtime.InstallStore(state, edgepack.load_trust(trust_path))
print("ready", flush=True)
while True:
    store.install(v2)
    store.rollback("fault loop")
"""


def install_kill(work: Path, trust_file: Path, key: SigningKey, rng: random.Random, *, kills: int = 5,
                 window_s: float = 0.3) -> Outcome:
    """SIGKILL a process that installs and rolls back in a loop; the store is always old or new, whole."""
    import runtime

    out = Outcome("device SIGKILL during install")
    trust = load_trust(trust_file)
    v1 = linear_bundle(work, key, 1)
    (work / "v2").mkdir()
    v2 = linear_bundle(work / "v2", key, 2)
    expected = {v: runtime.load(b, trust).manifest.to_dict() for v, b in ((1, v1), (2, v2))}
    state = work / "state"
    runtime.InstallStore(state, trust).install(v1).raise_for_status()
    for _ in range(kills):
        p = subprocess.Popen([sys.executable, "-c", INSTALL_CHILD, str(state), str(v2), str(trust_file)],
                             stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, window_s))
        finally:
            p.kill()
            p.communicate(timeout=30)
        out.injected += 1
        out.mid += 1
        out.devices += 1
        try:
            model = runtime.InstallStore(state, trust).load_active(allow_fallback=False)
            if model.manifest.to_dict() != expected.get(model.version) or not runtime.health_check(model).ok:
                out.problems.append(f"inconsistent: active v{model.version} is not exactly a verified v1 or v2")
            else:
                out.verified += 1
        except Exception as e:  # noqa: BLE001 (any failure here is the finding)
            out.problems.append(f"inconsistent: the active model does not load after the kill: {e}")
    return out


# ---- a full disk during an install ------------------------------------------------------------
def disk_full(work: Path, trust_file: Path, key: SigningKey, rng: random.Random, *, report: int = 1_000_000) -> Outcome:
    """Install v2 on a small tmpfs left with a random amount of free space below what v2 needs."""
    import runtime

    out = Outcome("disk full during install")
    trust = load_trust(trust_file)
    mnt = work / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        out.problems.append("inconsistent: cannot mount a tmpfs here (run as root)")
        return out
    try:
        v1 = linear_bundle(work, key, 1)
        (work / "v2").mkdir()
        v2 = linear_bundle(work / "v2", key, 2, report=report)
        state = mnt / "state"
        store = runtime.InstallStore(state, trust)
        store.install(v1).raise_for_status()
        st = os.statvfs(mnt)
        free = st.f_bavail * st.f_frsize
        leave = rng.randint(16 << 10, v2.stat().st_size - (8 << 10))
        filler = mnt / "filler"
        filler.write_bytes(b"\0" * max(0, free - leave))
        before = {p.relative_to(state) for p in state.rglob("*") if p.is_file()}
        res = store.install(v2)
        out.injected += 1
        out.mid += 1
        if res.ok or (res.reason or {}).get("code") != "no_space":
            out.problems.append(f"inconsistent: install on a full disk gave {res.ok} {res.reason}")
        after = {p.relative_to(state) for p in state.rglob("*") if p.is_file()}
        if after != before:
            out.problems.append(f"inconsistent: files left behind: {sorted(map(str, after ^ before))}")
        _verified(state, trust, 1, out, final=False)
        filler.unlink()
        if not store.install(v2).ok:
            out.problems.append("inconsistent: the install did not succeed once space was freed")
        _verified(state, trust, 2, out)
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    return out


# ---- a damaged WAL frame -----------------------------------------------------------------------
def wal_snapshot(inst: Path, dest: Path, transactions: int) -> None:
    """``transactions`` committed transactions (two rows each) left in the WAL, as a crash leaves them."""
    con = sqlite3.connect(inst / "fleet.db", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for i in range(transactions):
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (f"tx{i}a", "x" * 200))
        con.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (f"tx{i}b", "y" * 200))
        con.execute("COMMIT")
    shutil.copytree(inst, dest)  # the files as they are while the connection still holds the WAL
    con.close()


def committed_transactions(inst: Path) -> list[int]:
    """The wal_snapshot transactions present; raises AssertionError on a torn one or a bad page."""
    con = sqlite3.connect(inst / "fleet.db")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        keys = {k for (k,) in con.execute("SELECT key FROM meta WHERE key LIKE 'tx%'")}
    finally:
        con.close()
    done = sorted(int(k[2:-1]) for k in keys if k.endswith("a"))
    assert {f"tx{i}b" for i in done} <= keys and len(keys) == 2 * len(done), "a transaction was torn"
    return done


def wal_damage(work: Path, trust_file: Path, key: SigningKey, rng: random.Random, *, transactions: int = 6,
               injections: int = 2) -> Outcome:
    """Flip one random byte of one random WAL frame; ``fleet serve`` must refuse exactly when committed
    transactions would be dropped, and otherwise start on every whole transaction before the damage."""
    out = Outcome("damaged WAL frame")
    fleet = FleetProc(work, trust_file)
    clean = work / "clean"
    wal_snapshot(fleet.inst, clean, transactions)
    raw0 = (clean / "fleet.db-wal").read_bytes()
    page = int.from_bytes(raw0[8:12], "big")
    frames = (len(raw0) - 32) // (page + 24)
    commits = [i + 1 for i in range(frames) if int.from_bytes(raw0[32 + i * (page + 24) + 4:][:4], "big")]
    for k in range(injections):
        inst = work / f"damaged{k}"
        shutil.copytree(clean, inst)
        f = rng.randint(1, frames)
        at = 32 + (f - 1) * (page + 24) + rng.randrange(page + 24)
        raw = bytearray(raw0)
        raw[at] ^= 1 << rng.randrange(8)
        (inst / "fleet.db-wal").write_bytes(bytes(raw))
        out.injected += 1
        out.mid += 1
        must_refuse = any(c > f for c in commits)
        port = free_port()
        p = subprocess.run([*CLI, "fleet", "serve", "--instance", str(inst), "--port", str(port), "--workers", "1"],
                           capture_output=True, text=True, timeout=20) if must_refuse else None
        if must_refuse:
            if p is None or p.returncode != 13:
                out.problems.append(f"loss: frame {f} damaged before committed ones, serve did not refuse "
                                    f"({p and p.returncode})")
            continue
        server = Server(inst, port)
        try:
            server.start()
        except AssertionError as e:
            out.problems.append(f"inconsistent: damage only in the last transaction (frame {f}) and serve "
                                f"refused: {e}")
            continue
        finally:
            server.stop()
        try:
            got = committed_transactions(inst)
        except AssertionError as e:
            out.problems.append(f"inconsistent: {e}")
            continue
        want = list(range(sum(c < f for c in commits)))
        if got != want:
            out.problems.append(f"loss: frame {f} damaged: {len(got)} transactions present, {len(want)} expected")
    return out
