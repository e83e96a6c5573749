"""The agent against the real fleet server: enroll, refresh TUF, fetch the
assignment, download, verify TUF and the bundle signature, install through the
A/B store, report; and what happens when any of that goes wrong."""

from __future__ import annotations

import io
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from edgepack import BundleBuilder, generate_key
from fleet_server._models import Device, Release, Report

from ..conftest import TINY_IO, golden_npz


def _device(env, device_id: str) -> Device:
    with env.fleet.db.read() as s:
        return s.get(Device, device_id)


def _reports(env, device_id: str) -> list[Report]:
    with env.fleet.db.read() as s:
        return list(s.scalars(select(Report).where(Report.device_id == device_id).order_by(Report.id)))


def _deploy(env, bundle: Path) -> dict:
    rel = env.upload(bundle)
    env.roll_out(rel["id"])
    return rel


def test_agent_installs_the_assigned_release_and_reports_it(fleet_env, make_agent, make_bundle) -> None:
    agent = make_agent()
    _deploy(fleet_env, make_bundle(version=1))
    delay = agent.step()
    assert agent.installer.active_version() == 1
    assert 0.8 * 30 <= delay <= 1.2 * 30, "after a success the agent polls at the server's pace, jittered"
    installs = [r for r in _reports(fleet_env, agent.state.device_id) if r.kind == "install"]
    assert [(r.release_version, r.ok) for r in installs] == [(1, True)]
    assert _device(fleet_env, agent.state.device_id).active_version == 1
    x = np.zeros((2, 4), np.float32)
    assert agent.installer.model().predict(x).shape == (2, 3)
    assert len(agent.outbox) == 0


def test_agent_does_not_reinstall_the_active_version(fleet_env, make_agent, make_bundle) -> None:
    agent = make_agent()
    _deploy(fleet_env, make_bundle(version=1))
    agent.step()
    agent.step()
    installs = [r for r in _reports(fleet_env, agent.state.device_id) if r.kind == "install"]
    assert len(installs) == 1


def test_bad_golden_outputs_roll_back_and_the_reason_is_reported(fleet_env, make_agent, make_bundle,
                                                                 onnx_bytes, release_keys, tmp_path) -> None:
    agent = make_agent()
    _deploy(fleet_env, make_bundle(version=1))
    agent.step()
    # v2: a valid, signed bundle whose golden outputs are wrong -> the health check fails.
    b = BundleBuilder("tiny", 2, io=TINY_IO, lineage={"seed": 0, "parent_version": 1})
    b.add_artifact("tiny.fp32.onnx", onnx_bytes, format="onnx", precision="fp32")
    good = np.load(io.BytesIO(golden_npz(onnx_bytes)))
    bad = io.BytesIO()
    np.savez(bad, **{k: (v + 5.0 if k.startswith(("out__", "tiny")) else v) for k, v in good.items()})
    b.set_golden(bad.getvalue())
    _deploy(fleet_env, b.write(tmp_path / "tiny-2.edgepack", release_keys[:1]))
    agent.step()
    assert agent.installer.active_version() == 1, "the old version keeps serving"
    failed = [r for r in _reports(fleet_env, agent.state.device_id) if r.kind == "install" and not r.ok]
    assert len(failed) == 1 and failed[0].release_version == 2
    assert "HealthCheckError" in failed[0].reason and failed[0].data["reason"]["code"] == "health_check_failed"
    agent.step()  # a failed version is reported once, not retried in a loop
    assert len([r for r in _reports(fleet_env, agent.state.device_id) if r.kind == "install" and not r.ok]) == 1


def test_compromised_online_key_cannot_ship_a_bundle_without_release_signatures(
        fleet_env, make_agent, make_bundle, tmp_path) -> None:
    agent = make_agent()
    _deploy(fleet_env, make_bundle(version=1))
    agent.step()
    # The attacker holds the server and its online TUF key: they publish a bundle signed by
    # their own key into the group's TUF role and point the device at it. TUF accepts it
    # (the online key signs group roles); the release trust file does not.
    evil = make_bundle(version=2, keys=[generate_key()], out=tmp_path / "evil-2.edgepack")
    data = evil.read_bytes()
    repo = fleet_env.fleet.publisher.repo
    info = repo.publish_target("default", "tiny-2.edgepack", data)
    with fleet_env.fleet.db.write() as s:
        rel = Release(name="tiny", version=2, kind="bundle", sha256=info.hashes["sha256"], size=len(data),
                      storage_key="none")
        s.add(rel)
        s.flush()
        s.get(Device, agent.state.device_id).desired_release_id = rel.id
    agent.step()
    assert agent.installer.active_version() == 1
    failed = [r for r in _reports(fleet_env, agent.state.device_id) if r.kind == "install" and not r.ok]
    assert failed and "UntrustedKeyError" in failed[0].reason


def test_assignment_for_a_target_tuf_never_signed_is_refused(fleet_env, make_agent, make_bundle) -> None:
    agent = make_agent()
    with fleet_env.fleet.db.write() as s:
        rel = Release(name="tiny", version=7, kind="bundle", sha256="0" * 64, size=10, storage_key="none")
        s.add(rel)
        s.flush()
        s.get(Device, agent.state.device_id).desired_release_id = rel.id
    agent.step()
    assert agent.installer.active_version() is None
    failed = [r for r in _reports(fleet_env, agent.state.device_id) if r.kind == "install" and not r.ok]
    assert failed and "TargetNotTrustedError" in failed[0].reason


def test_agent_keeps_serving_offline_backs_off_and_delivers_queued_reports(
        fleet_env, make_agent, make_bundle) -> None:
    agent = make_agent()
    _deploy(fleet_env, make_bundle(version=1))
    agent.step()
    port = fleet_env.server.server_port
    fleet_env.stop()
    agent.report("crash", False, version=1, reason="test crash while offline")
    delays = [agent.step() for _ in range(4)]
    assert agent.state.consecutive_failures == 4
    caps = [min(8, 1 * 2 ** (n - 1)) for n in range(1, 5)]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps, strict=True)), delays
    model = agent.installer.model()  # still serving from the A/B store, no network
    assert model.version == 1 and np.isfinite(model.predict(np.ones((1, 4), np.float32))).all()
    assert len(agent.outbox) == 1
    fleet_env.start(port)
    agent.step()
    assert agent.state.consecutive_failures == 0 and len(agent.outbox) == 0
    crashes = [r for r in _reports(fleet_env, agent.state.device_id) if r.kind == "crash"]
    assert [c.reason for c in crashes] == ["test crash while offline"]


def test_agent_resumes_after_restart_with_its_identity_and_state(fleet_env, make_agent, make_bundle) -> None:
    agent = make_agent()
    device_id = agent.state.device_id
    _deploy(fleet_env, make_bundle(version=1))
    agent.step()
    again = make_agent(enroll=False)  # a new process over the same state directory
    assert again.state.device_id == device_id and again.installer.active_version() == 1
    _deploy(fleet_env, make_bundle(version=2))
    again.step()
    assert again.installer.active_version() == 2
    assert _device(fleet_env, device_id).active_version == 2


def test_group_metadata_needs_a_signed_request_from_the_group(fleet_env, make_agent) -> None:
    make_agent()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(fleet_env.url + "/tuf/metadata/group-default.json", timeout=10)  # noqa: S310
    assert e.value.code == 401


def test_telemetry_of_the_serving_model_is_reported(fleet_env, make_agent, make_bundle) -> None:
    agent = make_agent()
    _deploy(fleet_env, make_bundle(version=1))
    agent.step()
    model = agent.installer.model()
    for _ in range(5):
        model.predict(np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32))
    agent._last_telemetry = 0.0  # the interval has passed
    agent.step()
    tel = [r for r in _reports(fleet_env, agent.state.device_id) if r.kind == "telemetry"]
    assert tel and tel[-1].release_version == 1 and tel[-1].ok
    assert tel[-1].data["calls"] == 5 and tel[-1].data["samples"] == 10
    assert tel[-1].data["active_version"] == 1 and "latency" in tel[-1].data
    # the summary the rollout gates read (a report without it never fed the latency and drift gates)
    assert tel[-1].data["latency_ms"] == tel[-1].data["latency"]["mean_ms"] > 0
    psis = [d["psi"] for d in tel[-1].data["inputs"] if d["psi"] is not None]
    assert ("drift" in tel[-1].data) == bool(psis)
    if psis:
        assert tel[-1].data["drift"] == max(psis)
    counts = tel[-1].data["predictions"].get("counts")
    if counts:
        assert sum(tel[-1].data["prediction_counts"].values()) == sum(counts) == 10
    from fleet_server._gates import GateConfig, evaluate

    res = evaluate(GateConfig(min_reports=1), tel, [tel[-1].data["latency_ms"] / 2], 1, {agent.state.device_id})
    assert res.metrics["latency_samples"] == 1 and res.metrics["latency_regression"] > 0.9
