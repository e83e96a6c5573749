"""Rollouts: waves, health gates, automatic rollback with a reason, deadlines, manual actions."""

from __future__ import annotations

import time

import pytest

GATES = {"min_reports": 2, "max_failure_rate": 0.2, "max_crashes": 0, "max_load_failures": 0}


@pytest.fixture
def fleet_of(enroll):
    def make(n: int, group: str = "default"):
        return [enroll(group, name=f"dev{i}") for i in range(n)]
    return make


def start(admin, version, group="default", waves=(100,), gates=GATES, timing=None):
    r = admin.post("/rollouts", {"release": {"name": "digits", "version": version}, "group": group,
                                 "waves": list(waves), "gates": gates, **({"timing": timing} if timing else {})})
    assert r.status_code == 201, r.json
    return r.json


def assigned(devices, version):
    return [d for d in devices if (d.assignment().json["release"] or {}).get("version") == version]


def install_all(devices, version, ok=True, **data):
    for d in devices:
        assert d.report("install", version, ok=ok, **data).status_code == 202


@pytest.fixture
def baseline(admin, make_bundle, fleet_of):
    """Ten devices running digits v1 (a completed rollout), and v2 uploaded."""
    devices = fleet_of(10)
    assert admin.upload(make_bundle(1)).status_code == 201
    r1 = start(admin, 1)
    install_all(devices, 1)
    assert admin.get(f"/rollouts/{r1['id']}").json["state"] == "completed"
    assert admin.upload(make_bundle(2)).status_code == 201
    return devices


def test_waves_advance_on_healthy_reports_and_complete(admin, baseline):
    r = start(admin, 2, waves=(10, 50, 100))
    first = assigned(baseline, 2)
    assert len(first) == 1 and r["wave_index"] == 0
    install_all(first, 2)
    second = assigned(baseline, 2)
    assert len(second) == 5 and set(d.id for d in first) <= set(d.id for d in second)
    assert admin.get(f"/rollouts/{r['id']}").json["wave_index"] == 1
    install_all([d for d in second if d not in first], 2)
    assert len(assigned(baseline, 2)) == 10
    install_all([d for d in baseline if d.id not in {x.id for x in second}], 2)
    done = admin.get(f"/rollouts/{r['id']}").json
    assert done["state"] == "completed"
    assert admin.get("/groups").json["groups"][0]["current_release"] == {"name": "digits", "version": 2}


def test_wave_waits_for_its_minimum_count(admin, baseline):
    r = start(admin, 2, waves=(50, 100), gates={**GATES, "min_reports": 3})
    wave = assigned(baseline, 2)
    install_all(wave[:2], 2)
    assert admin.get(f"/rollouts/{r['id']}").json["wave_index"] == 0  # 2 of the 3 needed
    install_all(wave[2:3], 2)
    assert admin.get(f"/rollouts/{r['id']}").json["wave_index"] == 1


@pytest.mark.parametrize("report,expect", [
    (dict(kind="install", ok=False, reason="checksum"), "failure rate"),
    (dict(kind="install", ok=False, reason="cannot load", stage="load"), "load failure"),
    (dict(kind="crash", ok=False, reason="SIGSEGV"), "crash"),
])
def test_tripped_gate_rolls_back_to_the_previous_release_with_a_reason(admin, baseline, report, expect):
    r = start(admin, 2, waves=(50, 100))
    wave = assigned(baseline, 2)
    report = dict(report)  # the parameter is shared by the sqlite and postgresql runs
    kind, ok, reason = report.pop("kind"), report.pop("ok"), report.pop("reason")
    for d in wave[:2]:
        assert d.report(kind, 2, ok=ok, reason=reason, **report).status_code == 202
    got = admin.get(f"/rollouts/{r['id']}").json
    assert got["state"] == "rolled_back" and expect in got["reason"], got["reason"]
    assert {d.assignment().json["release"]["version"] for d in baseline} == {1}
    alerts = admin.get("/alerts").json["alerts"]
    assert any(a["kind"] == "rollback" and a["level"] == "critical" for a in alerts)


def test_latency_regression_and_drift_gates_use_telemetry(admin, baseline):
    for d in baseline:
        d.report("telemetry", 1, latency_ms=10.0, drift=0.01)
    r = start(admin, 2, waves=(50, 100), gates={**GATES, "max_latency_regression": 0.5})
    wave = assigned(baseline, 2)
    for d in wave[:2]:
        d.report("telemetry", 2, latency_ms=30.0, drift=0.02)
    got = admin.get(f"/rollouts/{r['id']}").json
    assert got["state"] == "rolled_back" and "latency regression" in got["reason"]


def test_drift_gate_trips_on_high_drift(admin, baseline):
    r = start(admin, 2, waves=(50, 100), gates={**GATES, "max_drift": 0.2})
    for d in assigned(baseline, 2)[:2]:
        d.report("telemetry", 2, drift=0.9)
    got = admin.get(f"/rollouts/{r['id']}").json
    assert got["state"] == "rolled_back" and "drift" in got["reason"]


def test_a_wave_that_misses_its_deadline_is_rolled_back(admin, baseline, fleet):
    from fleet_server._rollouts import tick

    r = start(admin, 2, waves=(50, 100), timing={"wave_deadline_s": 60})
    assert tick(fleet, r["id"], now=time.time() + 30) == "running"
    assert tick(fleet, r["id"], now=time.time() + 61) == "rolled_back"
    assert "missed its deadline" in admin.get(f"/rollouts/{r['id']}").json["reason"]


def test_pause_has_a_deadline_too(admin, baseline, fleet):
    from fleet_server._rollouts import tick

    r = start(admin, 2, waves=(50, 100), timing={"pause_deadline_s": 100})
    assert admin.post(f"/rollouts/{r['id']}/pause").json["state"] == "paused"
    assert tick(fleet, r["id"], now=time.time() + 101) == "rolled_back"


def test_manual_pause_resume_abort_and_refused_transitions(admin, baseline):
    r = start(admin, 2, waves=(10, 100))
    rid = r["id"]
    assert admin.post(f"/rollouts/{rid}/pause", {"reason": "checking logs"}).json["state"] == "paused"
    wave = assigned(baseline, 2)
    install_all(wave, 2)  # a paused rollout does not advance
    assert admin.get(f"/rollouts/{rid}").json["wave_index"] == 0
    assert admin.post(f"/rollouts/{rid}/pause").status_code == 409
    assert admin.post(f"/rollouts/{rid}/resume").json["state"] == "running"
    assert admin.post(f"/rollouts/{rid}/abort", {"reason": "enough"}).json["state"] == "aborted"
    assert admin.post(f"/rollouts/{rid}/resume").status_code == 409
    events = [e["kind"] for e in admin.get(f"/rollouts/{rid}").json["events"]]
    assert events == ["started", "paused", "resumed", "aborted"]


def test_manual_rollback_of_a_completed_rollout_restores_the_previous_release(admin, baseline):
    r = start(admin, 2)
    install_all(baseline, 2)
    assert admin.get(f"/rollouts/{r['id']}").json["state"] == "completed"
    got = admin.post(f"/rollouts/{r['id']}/rollback", {"reason": "customer complaint"}).json
    assert got["state"] == "rolled_back" and got["reason"] == "customer complaint"
    assert {d.assignment().json["release"]["version"] for d in baseline} == {1}
    assert admin.get("/groups").json["groups"][0]["current_release"]["version"] == 1


def test_second_active_rollout_for_a_group_and_older_version_are_refused(admin, baseline, make_bundle):
    start(admin, 2, waves=(10, 100))
    assert admin.upload(make_bundle(3)).status_code == 201
    r = admin.post("/rollouts", {"release": {"name": "digits", "version": 3}, "group": "default"})
    assert r.status_code == 409


@pytest.mark.parametrize("body", [
    {"waves": [50, 10, 100]}, {"waves": [10, 50]}, {"waves": "all"}, {"gates": {"max_failure_rate": -1}},
    {"gates": {"bogus": 1}}, {"timing": {"wave_deadline_s": 0}},
])
def test_bad_rollout_parameters_are_400(admin, baseline, body):
    r = admin.post("/rollouts", {"release": {"name": "digits", "version": 2}, "group": "default", **body})
    assert r.status_code == 400 and r.json["error"] == "BadRequestError"
