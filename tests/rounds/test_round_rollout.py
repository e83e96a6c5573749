"""Promotion -> rollout: a round's rollout plan starts the promoted release's health-gated rollout
automatically (with the reason recorded), and the next round trains on that parameter release."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from edgepack import Trust
from edgepack._params import parse_param_update, read_weights
from edgepack.federated._update import encode_plain

PLAN = {"group": "default", "waves": [50, 100], "gates": {"min_reports": 1}}


def _round(admin, devs, delta, eval_npz, base_version=1, **kw):
    body = {"model": "digits", "base_version": base_version, "params": ["W", "b"], "min_clients": len(devs),
            "evaluation": {"path": str(eval_npz), "threshold": 0.0}, **kw}
    r = admin.post("/rounds", body)
    assert r.status_code == 201, r.json
    rid = r.json["id"]
    for d in devs:
        blob = encode_plain(d.key, delta, round_id=rid, base_version=base_version, device_id=d.id, num_samples=80)
        assert d.upload(rid, blob).status_code == 200
    return admin.post(f"/rounds/{rid}/close").json


def test_promoted_candidate_is_released_and_its_rollout_starts_with_the_reason_recorded(
        federated_key, admin, enroll, champion, eval_npz):
    (W0, b0), (W1, b1) = champion
    devs = [enroll(f"d{i}") for i in range(2)]
    out = _round(admin, devs, {"W": W1 - W0, "b": b1 - b0}, eval_npz, rollout=PLAN)
    res = out["result"]
    assert res["promoted"] is True and res["release"]["version"] == 2 and out["reason"] is None, out
    assert res["rollout"]["group"] == "default" and res["rollout"]["state"] == "running"
    ro = admin.get(f"/rollouts/{res['rollout']['id']}").json
    assert ro["release"] == {"id": res["release"]["id"], "name": "digits", "version": 2}
    assert ro["waves"] == [50, 100] and ro["gates"]["min_reports"] == 1
    assert ro["assigned_devices"] == 1  # wave 1 = 50 % of 2 devices: the same health-gated waves
    promoted = [e for e in ro["events"] if e["kind"] == "promoted"]
    assert len(promoted) == 1 and out["id"] in promoted[0]["message"]
    assert f"{res['candidate_accuracy']:.4f}" in promoted[0]["message"] and promoted[0]["actor"] == f"round {out['id']}"
    assert out["evaluation"]["rollout"]["group"] == "default"


def test_round_page_links_the_release_and_the_rollout_it_started(federated_key, client, fleet, admin, enroll,
                                                                 champion, eval_npz):
    from .test_round_dashboard import _login

    (W0, b0), (W1, b1) = champion
    out = _round(admin, [enroll("d0")], {"W": W1 - W0, "b": b1 - b0}, eval_npz, rollout=PLAN)
    _login(client, fleet, admin)
    html = client.get(f"/rounds/{out['id']}").get_data(as_text=True)
    line = html.split('id="release"')[1].split("</p>")[0]
    rid = out["result"]["rollout"]["id"]
    assert "digits v2" in line and f'href="/rollouts/{rid}"' in line and "automatically to default" in line
    assert client.get(f"/rollouts/{rid}").status_code == 200


def test_a_rollout_left_pending_by_a_crash_is_started_by_the_next_close(federated_key, admin, enroll, champion,
                                                                       eval_npz, fleet):
    """The disk and database state a crash after the release was stored, but before its rollout
    started, leaves behind: close_round (the ticker or any status read) must start it, once."""
    from fleet_server._models_rounds import FLRound

    (W0, b0), (W1, b1) = champion
    dev = enroll("d0")
    busy = admin.post("/rollouts", {"release": {"name": "digits", "version": 1}, "group": "default"})
    assert busy.json["state"] == "running"
    out = _round(admin, [dev], {"W": W1 - W0, "b": b1 - b0}, eval_npz, rollout=PLAN)
    assert out["result"]["rollout"] is None  # the group was busy: nothing started
    assert admin.post(f"/rollouts/{busy.json['id']}/abort").status_code == 200
    with fleet.db.write() as s:
        r = s.get(FLRound, out["id"])
        r.result, r.reason = {**r.result, "rollout": "pending"}, None
    st = admin.get(f"/rounds/{out['id']}").json  # a status read runs close_round, which finishes the job
    assert st["result"]["rollout"]["state"] == "running" and st["reason"] is None
    again = admin.get(f"/rounds/{out['id']}").json
    assert again["result"]["rollout"]["id"] == st["result"]["rollout"]["id"]
    assert len(admin.get("/rollouts").json["rollouts"]) == 2  # the aborted one and this one: started once


def test_refused_candidate_starts_no_rollout(federated_key, admin, enroll, eval_npz):
    rng = np.random.default_rng(3)
    devs = [enroll(f"d{i}") for i in range(2)]
    delta = {"W": rng.normal(0, 3.0, (64, 10)).astype(np.float32), "b": np.zeros(10, np.float32)}
    out = _round(admin, devs, delta, eval_npz, rollout=PLAN)
    assert out["result"]["promoted"] is False and "rollout" not in out["result"]
    assert admin.get("/rollouts").json["rollouts"] == []


def test_a_rollout_that_cannot_start_is_recorded_on_the_round_and_the_release_is_kept(
        federated_key, admin, enroll, champion, eval_npz):
    (W0, b0), (W1, b1) = champion
    devs = [enroll(f"d{i}") for i in range(2)]
    busy = admin.post("/rollouts", {"release": {"name": "digits", "version": 1}, "group": "default",
                                    "gates": {"min_reports": 2}})
    assert busy.status_code == 201 and busy.json["state"] == "running"
    out = _round(admin, devs, {"W": W1 - W0, "b": b1 - b0}, eval_npz, rollout=PLAN)
    assert out["result"]["release"]["version"] == 2 and out["result"]["rollout"] is None
    assert "did not start" in out["reason"] and "already has active rollout" in out["reason"]
    assert admin.post(f"/rounds/{out['id']}/close").status_code == 409  # closed for good, nothing pending


@pytest.mark.parametrize("plan, status, where", [
    ({"group": "default", "waves": [50]}, 400, "waves"),
    ({"group": "nope"}, 404, "rollout.group"),
    ({"group": "default", "speed": 3}, 400, "rollout"),
    ({"group": "default", "gates": {"min_reports": -1}}, 400, "gates.min_reports"),
])
def test_bad_rollout_plan_is_refused_when_the_round_is_created(admin, enroll, eval_npz, plan, status, where):
    enroll("d0")
    r = admin.post("/rounds", {"model": "digits", "base_version": 1, "params": ["W", "b"],
                               "evaluation": {"path": str(eval_npz)}, "rollout": plan})
    assert r.status_code == status and r.json["where"] == where, r.json


def test_rollout_plan_without_an_evaluation_set_is_refused(admin, enroll):
    enroll("d0")
    r = admin.post("/rounds", {"model": "digits", "base_version": 1, "params": ["W", "b"], "rollout": PLAN})
    assert r.status_code == 400 and r.json["where"] == "rollout" and "evaluation" in r.json["message"]


def test_next_round_trains_on_the_promoted_parameter_release(federated_key, admin, enroll, champion, eval_npz,
                                                             fleet):
    (W0, b0), (W1, b1) = champion
    devs = [enroll(f"d{i}") for i in range(2)]
    first = _round(admin, devs, {"W": W1 - W0, "b": b1 - b0}, eval_npz)
    assert first["result"]["release"]["version"] == 2
    cand = np.load(fleet.config.instance_dir / "rounds" / first["id"] / "candidate.npz")
    r2 = admin.post("/rounds", {"model": "digits", "base_version": 2, "params": ["W", "b"], "min_clients": 2})
    assert r2.status_code == 201, r2.json
    got = devs[0].get_round().json["round"]
    assert got["round_id"] == r2.json["id"] and got["base_version"] == 2
    W = np.frombuffer(base64.b64decode(got["params"]["W"]["data"]), np.float32).reshape(64, 10)
    np.testing.assert_array_equal(W, cand["W"])  # the global model is the promoted candidate, bit for bit
    # a third version chains on the second: its .epu names base v2 and rebuilds from v2's artifact
    admin.post(f"/rounds/{r2.json['id']}/close")
    second = _round(admin, devs, {"W": (W1 - W0) * 0.1, "b": (b1 - b0) * 0.1}, eval_npz, base_version=2)
    res = second["result"]
    assert res["promoted"] is True and res["release"]["version"] == 3, second
    epu = (fleet.config.instance_dir / "rounds" / second["id"] / "candidate.epu").read_bytes()
    u, _ = parse_param_update(epu, Trust.of([federated_key.public]))
    assert (u.version, u.base_version) == (3, 2)
    from fleet_server._models import Release
    from fleet_server._rounds_chain import release_artifacts

    with fleet.db.read() as s:
        v3 = s.query(Release).filter_by(name="digits", version=3).one()
        s.expunge(v3)
    arts = release_artifacts(fleet, v3)
    onnx = next(v for k, v in arts.items() if k.endswith(".onnx"))
    np.testing.assert_array_equal(read_weights("onnx", onnx, ["W"])["W"],
                                  np.load(fleet.config.instance_dir / "rounds" / second["id"] / "candidate.npz")["W"])


def test_a_status_read_while_a_close_publishes_does_not_overwrite_the_stored_release(
        federated_key, admin, enroll, champion, eval_npz, fleet):
    """A close commits the promoted round with its release "pending", then stores the release and
    starts the planned rollout. A status read (or an admin close) in that window also runs
    close_round, sees "pending" and publishes too: its store of the same candidate is refused as a
    duplicate, and that failure must not replace the release the first close stored."""
    import threading
    import time

    from fleet_server._models_rounds import FLRound
    from fleet_server._rounds import close_round

    (W0, b0), (W1, b1) = champion
    devs = [enroll(f"d{i}") for i in range(2)]
    r = admin.post("/rounds", {"model": "digits", "base_version": 1, "params": ["W", "b"], "min_clients": 2,
                               "evaluation": {"path": str(eval_npz), "threshold": 0.0}, "rollout": PLAN})
    rid = r.json["id"]
    for d in devs:
        blob = encode_plain(d.key, {"W": W1 - W0, "b": b1 - b0}, round_id=rid, base_version=1, device_id=d.id,
                            num_samples=80)
        assert d.upload(rid, blob).status_code == 200
    errors: list[Exception] = []

    def ticker_close() -> None:  # the deadline passed: what a worker's ticker runs
        try:
            close_round(fleet, rid, now=time.time() + 7200)
        except Exception as e:  # noqa: BLE001 (collected and asserted below)
            errors.append(e)

    t = threading.Thread(target=ticker_close)
    t.start()
    end = time.monotonic() + 60
    while time.monotonic() < end:
        with fleet.db.read() as s:
            if (s.get(FLRound, rid).result or {}).get("release") == "pending":
                break
        time.sleep(0.001)
    else:
        pytest.fail("the close never committed its pending release")
    close_round(fleet, rid)  # a status read inside the publish window
    t.join(120)
    assert errors == []
    st = admin.get(f"/rounds/{rid}").json
    assert st["reason"] is None, st["reason"]
    assert st["result"]["release"]["version"] == 2 and st["result"]["rollout"]["state"] == "running", st["result"]
    assert len(admin.get("/rollouts").json["rollouts"]) == 1


def test_a_release_stored_just_before_a_crash_is_adopted_by_the_retried_close(
        federated_key, admin, enroll, champion, eval_npz, fleet):
    """A crash after store_param_update committed but before the round recorded it leaves the release
    "pending" with the release already in the table: the retry must record that release, not fail
    on its own duplicate store."""
    from fleet_server._models_rounds import FLRound

    (W0, b0), (W1, b1) = champion
    out = _round(admin, [enroll("d0")], {"W": W1 - W0, "b": b1 - b0}, eval_npz)
    stored = out["result"]["release"]
    assert stored["version"] == 2
    with fleet.db.write() as s:
        r = s.get(FLRound, out["id"])
        r.result = {**r.result, "release": "pending"}
    st = admin.get(f"/rounds/{out['id']}").json  # a status read retries what is pending
    assert st["reason"] is None, st["reason"]
    assert st["result"]["release"]["id"] == stored["id"] and st["result"]["release"]["sha256"] == stored["sha256"]
