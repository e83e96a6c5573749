"""The device side: real runtime model (onnxruntime) and trainer, compressed signed uploads over
real HTTP on 127.0.0.1 to the real app, eligibility and deadline honoured."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgepack import Trust


@pytest.fixture
def served(app):
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, app, threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    t.join(timeout=10)


@pytest.fixture
def model(base_bundle, release_key):
    import runtime

    return runtime.load(base_bundle, Trust.of([release_key.public]))


def _split(digits, i, n):
    x, y, _, _ = digits
    keep = (y % n) == i  # non-IID: each device holds a few classes only
    return x[keep][:150], y[keep][:150]


@pytest.mark.parametrize("codec", ["none", "int8"])
def test_selected_devices_train_and_upload_and_the_round_improves_on_the_champion(
        federated_key, admin, enroll, served, model, digits, eval_npz, tmp_path, codec):
    from runtime.agent._federated import FEEDBACK_FILE, participate
    from runtime.agent._http import FleetClient

    devs = [enroll(f"d{i}") for i in range(3)]
    rid = admin.post("/rounds", {"model": "digits", "base_version": 1, "params": ["W", "b"], "min_clients": 3,
                                 "codecs": [codec], "evaluation": {"path": str(eval_npz), "threshold": 0.0}}).json["id"]
    api = FleetClient(served)
    outs = []
    for i, d in enumerate(devs):
        x, y = _split(digits, i, 3)
        outs.append(participate(api, d.id, d.key, tmp_path / d.id, model, x, y,
                                conditions=lambda: {"charging": True, "idle": True, "wifi": True}))
    assert [o["status"] for o in outs] == ["uploaded"] * 3, outs
    assert all((tmp_path / d.id / FEEDBACK_FILE).exists() == (codec == "int8") for d in devs)
    again = participate(api, devs[0].id, devs[0].key, tmp_path, model, *_split(digits, 0, 3),
                        conditions=lambda: {"charging": True, "idle": True, "wifi": True})
    assert again == {"status": "no_round"}  # already answered this round
    res = admin.post(f"/rounds/{rid}/close").json["result"]
    assert res["accepted"] == 3 and res["candidate_accuracy"] > res["champion_accuracy"], res
    assert res["promoted"] is True


def test_device_skips_a_round_when_not_eligible_now_or_too_close_to_the_deadline(
        admin, enroll, served, model, digits, tmp_path):
    import time

    from runtime.agent._federated import participate
    from runtime.agent._http import FleetClient

    devs = [enroll(f"d{i}") for i in range(2)]
    rid = admin.post("/rounds", {"model": "digits", "base_version": 1, "params": ["W", "b"], "min_clients": 2,
                                 "deadline_s": 30}).json["id"]
    api = FleetClient(served)
    x, y = _split(digits, 0, 2)
    out = participate(api, devs[0].id, devs[0].key, tmp_path, model, x, y,
                      conditions=lambda: {"charging": False, "idle": True, "wifi": True})
    assert out["status"] == "skipped" and "charging" in out["reason"]
    out = participate(api, devs[1].id, devs[1].key, tmp_path, model, x, y,
                      conditions=lambda: {"charging": True, "idle": True, "wifi": True},
                      now=lambda: time.time() + 28)
    assert out["status"] == "skipped" and "deadline" in out["reason"]
    assert admin.get(f"/rounds/{rid}").json["accepted"] == []


def test_concurrent_uploads_are_each_folded_exactly_once(admin, enroll, served, fleet):
    """Uploads race over real HTTP; the round lock serialises the folds (SQLite and PostgreSQL)."""
    import json
    import urllib.error
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from edgepack._device_auth import sign_request
    from edgepack.federated import ParamSpec, RoundAccumulator
    from edgepack.federated._update import encode_plain

    devs = [enroll(f"d{i}") for i in range(8)]
    rid = admin.post("/rounds", {"model": "digits", "base_version": 1, "params": ["W", "b"],
                                 "min_clients": 8}).json["id"]
    rng = np.random.default_rng(11)
    deltas = [{"W": rng.normal(0, 0.01, (64, 10)).astype(np.float32), "b": np.zeros(10, np.float32)} for _ in devs]
    blobs = [encode_plain(d.key, x, round_id=rid, base_version=1, device_id=d.id, num_samples=10 + i)
             for i, (d, x) in enumerate(zip(devs, deltas, strict=True))]

    def send(i: int) -> int:
        path = f"/api/v1/devices/{devs[i].id}/rounds/{rid}/update"
        h = {"Content-Type": "application/octet-stream", **sign_request(devs[i].key, devs[i].id, "POST", path, blobs[i])}
        req = urllib.request.Request(served + path, data=blobs[i], method="POST", headers=h)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())["already_counted"] is False and r.status
        except urllib.error.HTTPError as e:
            return e.code

    with ThreadPoolExecutor(8) as ex:
        assert list(ex.map(send, range(8))) == [200] * 8
    acc = RoundAccumulator.load(fleet.config.instance_dir / "rounds" / rid / "acc.state",
                                ParamSpec.from_params(deltas[0]))
    assert acc.count == 8 and acc.weight_sum == sum(10 + i for i in range(8))
    want = sum((10 + i) * x["W"].astype(np.float64) for i, x in enumerate(deltas)) / acc.weight_sum
    np.testing.assert_allclose(acc.finalize()["W"], want, rtol=0, atol=1e-9)


def test_device_side_module_imports_no_server_or_training_framework():
    import subprocess
    import sys

    code = ("import sys, runtime.agent._federated; "
            "print([m for m in ('flask', 'torch', 'tensorflow', 'converters', 'fleet_server', 'sqlalchemy') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _tamper_round_answer(app, how: str):
    """A network attacker between device and server (no TLS: residual risk R1) rewriting the
    round assignment, which is plain JSON with no signature of its own."""
    import base64
    import json

    inner = app.wsgi_app

    def wsgi(environ, start_response):
        if not environ["PATH_INFO"].endswith("/round"):
            return inner(environ, start_response)
        captured = {}
        body = b"".join(inner(environ, lambda status, headers, *a: captured.update(status=status)))
        doc = json.loads(body)
        params = (doc.get("round") or {}).get("params")
        if params:
            if how == "shifted":  # every weight moved: the device would upload (trained - forged) as its delta
                w = params["W"]
                a = np.frombuffer(base64.b64decode(w["data"]), np.float32) + np.float32(0.5)
                w["data"] = base64.b64encode(a.tobytes()).decode()
            elif how == "malformed":
                params["W"]["data"] = "%%% not base64 %%%"
            elif how == "foreign_name":  # a tensor the device's trainer does not produce
                params["hidden"] = dict(params["b"])
            elif how == "no_deadline":
                del doc["round"]["deadline_at"]
            elif how == "round_id_path":  # the id goes into the signed upload's URL path
                doc["round"]["round_id"] = "x/../../../reports"
        out = json.dumps(doc).encode()
        start_response(captured["status"], [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
        return [out]

    return wsgi


@pytest.mark.parametrize("how", ["shifted", "malformed", "foreign_name", "no_deadline", "round_id_path"])
def test_round_params_that_differ_from_the_verified_installed_model_are_never_trained_on(
        admin, enroll, app, model, digits, tmp_path, how):
    """The round's global params arrive unsigned; the installed model they must equal was verified
    (release signature, TUF). A device compares them before use and skips the round on any
    difference, instead of uploading a delta against forged weights or crashing the agent loop."""
    from werkzeug.serving import make_server

    from runtime.agent._federated import participate
    from runtime.agent._http import FleetClient

    dev = enroll("d0")
    rid = admin.post("/rounds", {"model": "digits", "base_version": 1, "params": ["W", "b"],
                                 "min_clients": 1}).json["id"]
    srv = make_server("127.0.0.1", 0, _tamper_round_answer(app, how), threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        out = participate(FleetClient(f"http://127.0.0.1:{srv.server_port}"), dev.id, dev.key, tmp_path, model,
                          *_split(digits, 0, 3), conditions=lambda: {"charging": True, "idle": True, "wifi": True})
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=10)
    assert out["status"] == "skipped" and out["round_id"] in (rid, None), out
    assert "installed" in out["reason"] or "malformed" in out["reason"], out
    assert admin.get(f"/rounds/{rid}").json["accepted"] == []
