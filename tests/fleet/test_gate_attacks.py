"""A compromised device lies in its reports to trip or to hold back a rollout gate (attacker 2 in
docs/threat-model.md, residual risk R5): every gate counts devices, not reports, so one device moves
only its own share, however many reports it sends."""

from __future__ import annotations

from . import test_rollouts
from .test_rollouts import GATES, assigned, start

baseline, fleet_of = test_rollouts.baseline, test_rollouts.fleet_of  # fixtures: ten devices on v1, v2 uploaded

FLOOD = 25


def test_one_device_flooding_failure_and_crash_reports_counts_once_and_cannot_trip_a_gate(admin, baseline):
    # a gate that tolerates one bad device in the minimum of three, and one crashing or unloadable device
    gates = {**GATES, "min_reports": 3, "max_failure_rate": 0.34, "max_crashes": 1, "max_load_failures": 1}
    r = start(admin, 2, waves=(50, 100), gates=gates)
    wave = assigned(baseline, 2)
    liar, honest = wave[0], wave[1:]
    assert len(wave) == 5
    for _ in range(FLOOD):
        assert liar.report("install", 2, ok=False, reason="lie", stage="load").status_code == 202
        assert liar.report("health", 2, ok=False, reason="lie").status_code == 202
        assert liar.report("crash", 2, ok=False, reason="lie").status_code == 202
    got = admin.get(f"/rollouts/{r['id']}").json
    assert got["state"] == "running", got["reason"]  # 75 failure and 25 crash reports from one device
    st = got["gate_status"]
    assert (st["outcomes"], st["failures"], st["crashes"], st["load_failures"]) == (1, 1, 1, 1), st
    for d in honest:  # the rest of the wave installs fine: 1 failed device in 3, 4, then 5
        assert d.report("install", 2, ok=True).status_code == 202
    got = admin.get(f"/rollouts/{r['id']}").json
    assert got["state"] == "running" and got["wave_index"] == 1, (got["state"], got["reason"])
    assert got["events"][-1]["kind"] == "wave"


def test_one_device_claiming_success_many_times_cannot_hide_the_failures_of_others(admin, baseline):
    r = start(admin, 2, waves=(50, 100), gates={**GATES, "min_reports": 3, "max_failure_rate": 0.2})
    wave = assigned(baseline, 2)
    outsider = next(d for d in baseline if d.id not in {w.id for w in wave})
    for _ in range(FLOOD):  # a device the rollout never assigned v2 claims it installed v2
        assert outsider.report("install", 2, ok=True).status_code == 202
    got = admin.get(f"/rollouts/{r['id']}").json
    assert got["gate_status"]["ok_devices"] == 0 and got["gate_status"]["wave_ok"] == 0, got["gate_status"]
    liar = wave[0]
    for _ in range(FLOOD):  # an assigned device claims success over and over for a release it never installed
        assert liar.report("install", 2, ok=True).status_code == 202
        assert liar.report("health", 2, ok=True).status_code == 202
    got = admin.get(f"/rollouts/{r['id']}").json
    assert got["state"] == "running" and got["wave_index"] == 0  # one device, 3 needed: the wave waits
    assert (got["gate_status"]["wave_ok"], got["gate_status"]["outcomes"]) == (1, 1), got["gate_status"]
    for d in wave[1:3]:  # two honest devices fail: 2 of 3 devices, not 2 of 102 reports
        assert d.report("install", 2, ok=False, reason="checksum").status_code == 202
    got = admin.get(f"/rollouts/{r['id']}").json
    assert got["state"] == "rolled_back" and "failure rate 67% > 20% (2/3 devices)" in got["reason"], got["reason"]


def test_a_flood_of_one_devices_reports_does_not_push_other_devices_failures_out_of_the_window(
        admin, baseline, fleet, monkeypatch):
    from fleet_server import _rollouts

    monkeypatch.setattr(_rollouts, "_REPORT_WINDOW", 20)  # the same bound as in production, made small
    r = start(admin, 2, waves=(50, 100), gates={**GATES, "min_reports": 4, "max_failure_rate": 0.3})
    wave = assigned(baseline, 2)
    for d in wave[1:3]:  # 2 devices of the 4 needed: too few to decide yet
        assert d.report("install", 2, ok=False, reason="checksum").status_code == 202
    for _ in range(FLOOD):  # newer than the failures, and more of them than the window holds
        assert wave[0].report("install", 2, ok=True).status_code == 202
        assert wave[0].report("health", 2, ok=True).status_code == 202
    assert admin.get(f"/rollouts/{r['id']}").json["state"] == "running"  # 3 devices of the 4 needed
    assert wave[3].report("install", 2, ok=True).status_code == 202
    got = admin.get(f"/rollouts/{r['id']}").json
    assert got["state"] == "rolled_back" and "(2/4 devices)" in got["reason"], got["reason"]
