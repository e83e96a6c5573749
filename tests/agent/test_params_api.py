"""Parameter-update releases through the admin API, end to end: the real Flask app on
127.0.0.1, the TUF repository, and a device agent with a real A/B store.

The server verifies the ``.epu`` (signature, base release, rebuilt artifact hashes)
before storing it; the rollout assigns the federated ``params/`` target; the agent
fetches the delta (smaller) and the model it then serves has the fine-tuned weights."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from sqlalchemy import select

from edgepack import generate_key
from edgepack._params import read_weights
from fleet_server._models import Report
from runtime.agent import delta_target_path, params_target_path

from ..conftest import tiny_onnx_model
from .test_params_delta import N_IN, N_OUT, _update, install_wide_v1


@pytest.fixture(scope="module")
def wide_onnx() -> bytes:
    return tiny_onnx_model(N_IN, N_OUT, seed=3)


def _multipart(fields: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = b""
    for name, data in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.epu\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _post_params(env, release_id: int, fields: dict[str, bytes]) -> tuple[int, dict]:
    body, ctype = _multipart(fields)
    req = urllib.request.Request(f"{env.url}/api/v1/admin/releases/{release_id}/params", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {env.admin}", "Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (loopback)
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def base(fleet_env, make_agent, wide_onnx, release_keys, tmp_path):
    agent, rel, _, fine = install_wide_v1(fleet_env, make_agent, wide_onnx, release_keys, tmp_path)
    return agent, rel, fine


def test_uploaded_params_release_rolls_out_and_the_device_applies_the_delta(fleet_env, base, wide_onnx) -> None:
    agent, rel, fine = base
    full = _update(wide_onnx, fine, fleet_env.federated, "whole")
    delta = _update(wide_onnx, fine, fleet_env.federated, "delta-xor")
    assert len(delta) < len(full)
    status, prel = _post_params(fleet_env, rel["id"], {"update": full, "delta": delta})
    assert status == 201, prel
    assert (prel["kind"], prel["version"], prel["base_version"], prel["size"]) == ("params", 2, 1, len(full))
    assert prel["delta"]["size"] == len(delta)

    fleet_env.roll_out(prel["id"])
    agent.step()
    assert agent.installer.active_version() == 2
    # the assignment pointed at the federated params/ target, and the smaller delta was what crossed the wire
    assert agent.last_delivery["delta"] is True and agent.last_delivery["bytes_received"] == len(delta)
    targets = fleet_env.fleet.publisher.repo.params_targets()
    assert params_target_path("wide", 2) in targets and delta_target_path(params_target_path("wide", 2), 1) in targets
    x = np.random.default_rng(5).standard_normal((3, N_IN)).astype(np.float32)
    b = read_weights("onnx", wide_onnx, ["B"])["B"]
    np.testing.assert_allclose(agent.installer.model().predict(x), x @ fine + b, rtol=1e-5, atol=1e-5)
    agent.flush()
    with fleet_env.fleet.db.read() as s:
        oks = s.scalars(select(Report).where(Report.kind == "install", Report.release_version == 2)).all()
        assert [r.ok for r in oks] == [True]


def test_full_update_alone_is_served_when_no_delta_is_uploaded(fleet_env, base, wide_onnx) -> None:
    agent, rel, fine = base
    full = _update(wide_onnx, fine, fleet_env.federated, "whole")
    status, prel = _post_params(fleet_env, rel["id"], {"update": full})
    assert status == 201 and prel["delta"] is None
    fleet_env.roll_out(prel["id"])
    agent.step()
    assert agent.installer.active_version() == 2
    assert agent.last_delivery["delta"] is False and agent.last_delivery["bytes_received"] == len(full)


@pytest.mark.parametrize("case", ["wrong_key", "wrong_base", "delta_other_weights", "garbage", "not_newer"])
def test_bad_param_uploads_are_refused_and_nothing_is_stored(fleet_env, base, wide_onnx, case) -> None:
    agent, rel, fine = base
    good = _update(wide_onnx, fine, fleet_env.federated, "whole")
    fields = {
        "wrong_key": {"update": _update(wide_onnx, fine, generate_key(), "whole")},
        "wrong_base": {"update": good},
        "delta_other_weights": {"update": good,
                                "delta": _update(wide_onnx, fine * 1.5, fleet_env.federated, "delta-xor")},
        "garbage": {"update": b"EPPU1\nnot an update"},
        "not_newer": {"update": good},
    }[case]
    rid = rel["id"]
    if case == "wrong_base":
        rid = 999
    if case == "not_newer":
        assert _post_params(fleet_env, rid, fields)[0] == 201
    before = fleet_env.admin_call("GET", "/api/v1/admin/releases")["releases"]
    status, err = _post_params(fleet_env, rid, fields)
    expected = {"wrong_key": 422, "wrong_base": 404, "delta_other_weights": 422, "garbage": 422, "not_newer": 409}
    assert status == expected[case], err
    assert set(err) >= {"error", "message"}
    assert fleet_env.admin_call("GET", "/api/v1/admin/releases")["releases"] == before


def test_param_upload_is_not_held_to_the_json_body_limit(fleet_env, base, wide_onnx) -> None:
    from fleet_server import FleetConfig, create_app

    _, rel, fine = base
    full = _update(wide_onnx, fine, fleet_env.federated, "whole")
    small_json = FleetConfig(instance_dir=fleet_env.instance, secret_key="agent-tests", testing=True,
                             tick_interval_s=0, max_json_bytes=1024)
    assert len(full) > small_json.max_json_bytes
    resp = create_app(small_json).test_client().post(
        f"/api/v1/admin/releases/{rel['id']}/params", data=full,
        headers={"Authorization": f"Bearer {fleet_env.admin}", "Content-Type": "application/octet-stream"})
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["kind"] == "params" and resp.get_json()["size"] == len(full)


def test_params_rollout_that_trips_its_health_gate_rolls_back_to_the_base_bundle(fleet_env, base, make_agent,
                                                                                 wide_onnx) -> None:
    agent, rel, fine = base
    other = make_agent("dev2")  # enrolled after v1 completed: its group's release is the base bundle
    other.step()
    assert other.installer.active_version() == 1
    full = _update(wide_onnx, fine, fleet_env.federated, "whole")
    status, prel = _post_params(fleet_env, rel["id"], {"update": full})
    assert status == 201, prel
    ro = fleet_env.admin_call("POST", "/api/v1/admin/rollouts",
                              {"release": prel["id"], "group": "default", "waves": [100],
                               "gates": {"min_reports": 2, "max_failure_rate": 0.1}})
    assert ro["previous_release"]["id"] == rel["id"]
    agent.step()  # installs the parameter update and reports it healthy
    assert agent.installer.active_version() == 2
    assert fleet_env.admin_call("GET", f"/api/v1/admin/rollouts/{ro['id']}")["state"] == "running"
    other.report("health", False, version=2, reason="golden outputs out of tolerance after the update")
    assert other.flush() == 1  # a bad report re-evaluates the rollout at once

    after = fleet_env.admin_call("GET", f"/api/v1/admin/rollouts/{ro['id']}")
    assert after["state"] == "rolled_back" and "health gate tripped" in after["reason"], after
    assignment = agent._signed("GET", f"/api/v1/devices/{agent.state.device_id}/assignment")["release"]
    assert (assignment["kind"], assignment["name"], assignment["version"]) == ("bundle", "wide", 1)
    assert assignment["sha256"] == rel["sha256"]
    # The base bundle is published for the group again and installs from TUF on a device that
    # has not taken the update yet (a device that already runs v2 goes back to its previous slot
    # once TUF withdraws v2: tests/agent/test_fleet_rollback.py).
    other.step()
    assert other.installer.active_version() == 1 and 1 not in other.state.failed_versions
    late = make_agent("dev3")
    late.step()
    assert late.installer.active_version() == 1
    x = np.random.default_rng(5).standard_normal((3, N_IN)).astype(np.float32)
    w, b = (read_weights("onnx", wide_onnx, [n])[n] for n in ("W", "B"))
    np.testing.assert_allclose(late.installer.model().predict(x), x @ w + b, rtol=1e-5, atol=1e-5)
