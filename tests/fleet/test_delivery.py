"""Target downloads: Range (resume) and ETag, group-only access; metrics; the app factory."""

from __future__ import annotations

import hashlib

import pytest


@pytest.fixture
def database_url(tmp_path):
    """HTTP behaviour, not storage: SQLite is enough here (the DB layer is tested on both)."""
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture
def released(admin, make_bundle, enroll):
    lab, other = enroll("lab"), enroll("other")
    path = make_bundle(1, size=50_000)
    assert admin.upload(path).status_code == 201
    r = admin.post("/rollouts", {"release": {"name": "digits", "version": 1}, "group": "lab", "waves": [100]})
    assert r.status_code == 201
    return lab, other, path.read_bytes()


def test_download_resumes_with_range_and_matches_the_assignment_hash(released):
    lab, _, data = released
    a = lab.assignment().json["release"]
    url = f"/tuf/targets/{a['target']}"
    full = lab.request("GET", url)
    assert full.status_code == 200 and full.data == data and full.headers["Accept-Ranges"] == "bytes"
    etag = full.headers["ETag"]
    head = data[:12345]  # pretend the connection dropped here
    rest = lab.request("GET", url, headers={"Range": f"bytes={len(head)}-", "If-Range": etag})
    assert rest.status_code == 206
    assert rest.headers["Content-Range"] == f"bytes {len(head)}-{len(data) - 1}/{len(data)}"
    joined = head + rest.data
    assert hashlib.sha256(joined).hexdigest() == a["sha256"] and len(joined) == a["size"]
    assert lab.request("GET", url, headers={"If-None-Match": etag}).status_code == 304
    assert lab.request("GET", url, headers={"Range": f"bytes={len(data) + 5}-"}).status_code == 416


def test_a_device_cannot_download_another_groups_target(released, client):
    lab, other, _ = released
    url = f"/tuf/targets/{lab.assignment().json['release']['target']}"
    assert other.request("GET", url).status_code == 403
    assert client.get(url).status_code == 401  # unsigned


def test_metrics_endpoint_exposes_fleet_gauges(client, enroll):
    assert "edgepack_devices_online 0.0" in client.get("/metrics").get_data(as_text=True)
    enroll().heartbeat(1)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'edgepack_devices{status="active"} 1.0' in text
    assert "edgepack_http_requests_total" in text and "edgepack_devices_online 1.0" in text


def test_create_app_without_a_secret_key_refuses_to_start(tmp_path):
    from edgepack import ConfigError
    from fleet_server import FleetConfig, create_app

    with pytest.raises(ConfigError, match="secret key"):
        create_app(FleetConfig(instance_dir=tmp_path, tick_interval_s=0))


def test_fleet_server_never_imports_torch_or_tensorflow():
    import subprocess
    import sys

    code = ("import sys, fleet_server, fleet_server._dashboard, fleet_server._publish;"
            "bad=[m for m in ('torch','tensorflow') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
