"""Fixtures for the fleet server tests: keys and bundles, a database (SQLite, and
PostgreSQL when one is reachable or can be started in a temp dir), the app, and
signed device clients."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest
from support.fleet_app import admin_token, app, client, fleet, fleet_config, release_key, trust_file  # noqa: F401  (fixtures)

from edgepack import BundleBuilder, generate_key
from edgepack._device_auth import sign_request


@pytest.fixture(scope="session")
def make_bundle(tmp_path_factory, release_key):
    """make_bundle(version, name="digits", key=..., expires_in=...) -> path of a signed bundle."""
    out = tmp_path_factory.mktemp("bundles")

    def make(version: int, name: str = "digits", key=release_key, expires_in=dt.timedelta(days=30),
             created_at=None, size: int = 2048) -> Path:
        b = BundleBuilder(name, version, expires_in=expires_in, created_at=created_at,
                          io={"inputs": [{"name": "x", "shape": [1, 64], "dtype": "float32"}]})
        b.add_artifact("model.onnx", os.urandom(size), format="onnx", precision="fp32")
        path = out / f"{name}-{version}-{os.urandom(4).hex()}.edgepack"
        return b.write(path, [key] if key is not None else [])

    return make

















class Admin:
    def __init__(self, client, token: str) -> None:
        self.client, self.headers = client, {"Authorization": f"Bearer {token}"}

    def post(self, path: str, body=None, **kw):
        return self.client.post(f"/api/v1/admin{path}", json=body, headers=self.headers, **kw)

    def get(self, path: str):
        return self.client.get(f"/api/v1/admin{path}", headers=self.headers)

    def upload(self, bundle: Path):
        return self.client.post("/api/v1/admin/releases", data=bundle.read_bytes(), headers=self.headers,
                                content_type="application/octet-stream")

    def enroll_token(self, group: str = "default", **extra) -> str:
        r = self.post("/enrollment-tokens", {"group": group, **extra})
        assert r.status_code == 201, r.json
        return r.json["token"]


@pytest.fixture
def admin(client, admin_token):
    return Admin(client, admin_token)


class DeviceClient:
    """A simulated device: its own Ed25519 key, every request signed."""

    def __init__(self, client, device_id: str, key) -> None:
        self.client, self.id, self.key = client, device_id, key

    def request(self, method: str, path: str, body=None, *, as_id: str | None = None, key=None, now=None,
                headers=None):
        data = json.dumps(body).encode() if body is not None else b""
        h = sign_request(key or self.key, as_id or self.id, method, path, data, now=now)
        h.update(headers or {})
        return self.client.open(path, method=method, data=data, headers=h, content_type="application/json")

    def assignment(self):
        return self.request("GET", f"/api/v1/devices/{self.id}/assignment")

    def report(self, kind: str, version, ok: bool = True, reason=None, **data):
        return self.request("POST", f"/api/v1/devices/{self.id}/reports",
                            {"kind": kind, "release_version": version, "ok": ok, "reason": reason, "data": data})

    def heartbeat(self, active_version=None):
        return self.request("POST", f"/api/v1/devices/{self.id}/heartbeat",
                            {"active_version": active_version, "state": {"charging": True, "idle": True,
                                                                         "wifi": True}})


@pytest.fixture
def enroll(client, admin):
    def do(group: str = "default", name: str = "dev", tags=None) -> DeviceClient:
        key = generate_key()
        r = client.post("/api/v1/enroll", json={"token": admin.enroll_token(group), "public_key": key.public.raw.hex(),
                                                "name": name, "tags": tags or {}})
        assert r.status_code == 201, r.json
        return DeviceClient(client, r.json["device_id"], key)
    return do


def wait_for(pred, timeout: float = 10.0, step: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return False
