"""Fixtures for round tests: a real ONNX softmax-regression bundle on digits, the Flask app on
SQLite, an admin client and signed device clients (minimal copies of tests/fleet/conftest.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from support.fleet_app import app, client, fleet, fleet_config, release_key, trust_file  # noqa: F401  (fixtures)
from support.models import onnx_linear, softmax_regression

from edgepack import BundleBuilder, generate_key, save_key_pair
from edgepack._device_auth import sign_request


def _run_onnx(onnx: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(onnx, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture(scope="session")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return x[:1200], d.target[:1200], x[1200:], d.target[1200:]


@pytest.fixture(scope="session")
def champion(digits):
    """Base weights trained only a little, and better weights trained longer from them."""
    x, y, _, _ = digits
    W0, b0 = softmax_regression(x, y, 3)
    W1, b1 = softmax_regression(x, y, 150, W0, b0)
    return (W0, b0), (W1, b1)








@pytest.fixture(scope="session")
def base_bundle(tmp_path_factory, release_key, champion, digits) -> Path:
    (W0, b0), _ = champion
    b = BundleBuilder("digits", 1, io={"inputs": [{"name": "x", "shape": ["N", 64], "dtype": "float32"}],
                                        "outputs": [{"name": "logits", "shape": ["N", 10], "dtype": "float32"}]})
    onnx = onnx_linear(W0, b0)
    b.add_artifact("model.onnx", onnx, format="onnx", precision="fp32")
    x = digits[0][:4]  # golden data, so a device's health check can pass (tests/rounds/test_agent_rounds.py)
    buf = io.BytesIO()
    np.savez(buf, in__x=x, out__logits=_run_onnx(onnx, x), **{"model.onnx__logits": _run_onnx(onnx, x)})
    b.set_golden(buf.getvalue())
    return b.write(tmp_path_factory.mktemp("bundles") / "digits-1.edgepack", [release_key])


@pytest.fixture(scope="session")
def eval_npz(tmp_path_factory, digits) -> Path:
    _, _, xt, yt = digits
    p = tmp_path_factory.mktemp("eval") / "eval.npz"
    np.savez(p, x=xt, y=yt)
    return p


@pytest.fixture
def federated_key(tmp_path):
    """A TUF fleet (as `edgepack fleet init --tuf-root-key` makes it); returns its online federated key.

    Request it before ``app``/``admin`` so the app opens the TUF publisher."""
    from edgepack import load_signing_key
    from fleet_server._publish import create_tuf

    save_key_pair(generate_key(), tmp_path / "root", "root")
    create_tuf(tmp_path / "instance", [tmp_path / "root" / "root.key"], 1, ["default"])
    return load_signing_key(tmp_path / "instance" / "tuf" / "federated.key")











class Admin:
    def __init__(self, client, token: str) -> None:
        self.client, self.headers = client, {"Authorization": f"Bearer {token}"}

    def post(self, path: str, body=None):
        return self.client.post(f"/api/v1/admin{path}", json=body, headers=self.headers)

    def get(self, path: str):
        return self.client.get(f"/api/v1/admin{path}", headers=self.headers)

    def upload(self, bundle: Path):
        return self.client.post("/api/v1/admin/releases", data=bundle.read_bytes(), headers=self.headers,
                                content_type="application/octet-stream")


@pytest.fixture
def admin(client, fleet, base_bundle):
    from fleet_server._bp_admin import create_admin_token

    a = Admin(client, create_admin_token(fleet.db, "test-admin"))
    r = a.upload(base_bundle)
    assert r.status_code == 201, r.json
    return a


class DeviceClient:
    def __init__(self, client, device_id: str, key) -> None:
        self.client, self.id, self.key = client, device_id, key

    def request(self, method: str, path: str, body=None, *, raw: bytes | None = None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        h = sign_request(self.key, self.id, method, path, data)
        ctype = "application/octet-stream" if raw is not None else "application/json"
        return self.client.open(path, method=method, data=data, headers=h, content_type=ctype)

    def heartbeat(self, **state):
        st = {"charging": True, "idle": True, "wifi": True, **state}
        return self.request("POST", f"/api/v1/devices/{self.id}/heartbeat", {"active_version": 1, "state": st})

    def get_round(self):
        return self.request("GET", f"/api/v1/devices/{self.id}/round")

    def upload(self, round_id: str, blob: bytes):
        return self.request("POST", f"/api/v1/devices/{self.id}/rounds/{round_id}/update", raw=blob)


@pytest.fixture
def enroll(client, admin):
    def do(name: str = "dev", **state) -> DeviceClient:
        tok = admin.post("/enrollment-tokens", {"group": "default"})
        assert tok.status_code == 201, tok.json
        key = generate_key()
        r = client.post("/api/v1/enroll", json={"token": tok.json["token"], "public_key": key.public.raw.hex(),
                                                "name": name})
        assert r.status_code == 201, r.json
        d = DeviceClient(client, r.json["device_id"], key)
        assert d.heartbeat(**state).status_code == 200
        return d
    return do
