"""A fleet rollback reaches devices that already run the bad release, and only through TUF.

The real server on 127.0.0.1, the real TUF repository and a device agent with a real A/B
store. The assignment answer is not signed, so a device goes below its active version only
when the signed metadata withdrew the active release for its group and vouches for the
exact file in its previous slot (docs/delivery.md, "Fleet rollback")."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from sqlalchemy import select

from edgepack._params import read_weights
from fleet_server._models import Device, Report

from ..conftest import tiny_onnx_model
from .test_params_api import _post_params
from .test_params_delta import N_IN, N_OUT, _update, install_wide_v1


def _installs(env, device_id: str) -> list[Report]:
    with env.fleet.db.read() as s:
        return list(s.scalars(select(Report).where(Report.device_id == device_id, Report.kind == "install")
                              .order_by(Report.id)))


def _active_on_server(env, device_id: str) -> int | None:
    with env.fleet.db.read() as s:
        return s.get(Device, device_id).active_version


@pytest.fixture
def on_v2(fleet_env, make_agent, make_bundle):
    """A device that installed tiny v2 from a running rollout (v1 before it); returns (agent, v1, rollout)."""
    agent = make_agent()
    v1 = fleet_env.upload(make_bundle(version=1))
    fleet_env.roll_out(v1["id"])
    agent.step()
    v2 = fleet_env.upload(make_bundle(version=2))
    ro = fleet_env.admin_call("POST", "/api/v1/admin/rollouts",
                              {"release": v2["id"], "group": "default", "waves": [100],
                               "gates": {"min_reports": 5}})
    agent.step()
    assert agent.installer.active_version() == 2
    return agent, v1, ro


def test_device_on_the_bad_release_follows_the_fleet_rollback_to_the_previous_one(fleet_env, on_v2) -> None:
    agent, _, ro = on_v2
    assert fleet_env.admin_call("POST", f"/api/v1/admin/rollouts/{ro['id']}/rollback",
                                {"reason": "bad v2"})["state"] == "rolled_back"
    agent.step()
    assert agent.installer.active_version() == 1
    assert agent.installer.model().predict(np.zeros((2, 4), np.float32)).shape == (2, 3), "v1 serves"
    last = _installs(fleet_env, agent.state.device_id)[-1]
    assert (last.release_version, last.ok, last.data) == (1, True, {"rolled_back": True, "from": 2})
    assert _active_on_server(fleet_env, agent.state.device_id) == 1
    agent.step()  # settled: nothing more to do
    assert agent.installer.active_version() == 1 and len(_installs(fleet_env, agent.state.device_id)) == 3


def test_forged_rollback_assignment_is_refused_while_tuf_still_lists_the_active_release(fleet_env,
                                                                                        on_v2) -> None:
    agent, v1, _ = on_v2
    forged = {"name": "tiny", "version": 1, "target": "groups/default/tiny-1.edgepack", "sha256": v1["sha256"],
              "kind": "bundle", "base_version": None}
    agent._deliver(forged)
    agent._deliver(forged)  # the same forgery again is re-checked, not re-reported
    assert agent.installer.active_version() == 2, "the device keeps serving v2"
    assert agent.flush() == 1
    last = _installs(fleet_env, agent.state.device_id)[-1]
    assert (last.release_version, last.ok) == (1, False)
    assert "rollback refused" in last.reason and "still lists the active tiny v2" in last.reason
    assert _active_on_server(fleet_env, agent.state.device_id) == 2
    assert agent.installer.store.journal()["active"]["version"] == 2


def test_rollback_is_refused_when_the_assigned_release_is_not_the_previous_slot(fleet_env, on_v2,
                                                                               make_bundle) -> None:
    agent, _, ro = on_v2
    fleet_env.admin_call("POST", f"/api/v1/admin/rollouts/{ro['id']}/rollback", {"reason": "bad v2"})
    agent._deliver({"name": "tiny", "version": 0, "target": "groups/default/tiny-0.edgepack", "kind": "bundle"})
    assert agent.installer.active_version() == 2
    agent.flush()
    last = _installs(fleet_env, agent.state.device_id)[-1]
    assert not last.ok and "previous slot holds tiny v1, not tiny v0" in last.reason


@pytest.fixture(scope="module")
def wide_onnx() -> bytes:
    return tiny_onnx_model(N_IN, N_OUT, seed=3)


def test_device_on_a_rolled_back_params_update_goes_back_to_its_base_bundle(fleet_env, make_agent, wide_onnx,
                                                                            release_keys, tmp_path) -> None:
    agent, rel, w, fine = install_wide_v1(fleet_env, make_agent, wide_onnx, release_keys, tmp_path)
    status, prel = _post_params(fleet_env, rel["id"], {"update": _update(wide_onnx, fine, fleet_env.federated,
                                                                         "whole")})
    assert status == 201, prel
    ro = fleet_env.admin_call("POST", "/api/v1/admin/rollouts", {"release": prel["id"], "group": "default",
                                                                 "waves": [100], "gates": {"min_reports": 5}})
    agent.step()
    assert agent.installer.active_version() == 2
    fleet_env.admin_call("POST", f"/api/v1/admin/rollouts/{ro['id']}/rollback", {"reason": "drift"})
    target = fleet_env.fleet.publisher.repo.params_targets()["params/wide/wide-2.epu"]
    assert target.custom["withdrawn_groups"] == ["default"]
    agent.step()
    assert agent.installer.active_version() == 1
    x = np.random.default_rng(5).standard_normal((3, N_IN)).astype(np.float32)
    b = read_weights("onnx", wide_onnx, ["B"])["B"]
    np.testing.assert_allclose(agent.installer.model().predict(x), x @ w + b, rtol=1e-5, atol=1e-5)
    last = _installs(fleet_env, agent.state.device_id)[-1]
    assert (last.release_version, last.ok, last.data) == (1, True, {"rolled_back": True, "from": 2})
    assert _active_on_server(fleet_env, agent.state.device_id) == 1
    prev = agent.installer.store.previous()
    assert prev.version == 2 and prev.params_sha256 == hashlib.sha256(
        (tmp_path / "dev1/store/slots" / prev.slot / "params.epu").read_bytes()).hexdigest()
