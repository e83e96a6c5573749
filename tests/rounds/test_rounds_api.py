"""Rounds on the real Flask app (SQLite): cohort and eligibility, quorum, deadline, late and replayed
updates, and champion/challenger promotion into a signed parameter-update release."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgepack import Trust
from edgepack._params import parse_param_update
from edgepack.federated._update import encode_plain


def _create(admin, **kw):
    body = {"model": "digits", "base_version": 1, "params": ["W", "b"], "min_clients": 2, "deadline_s": 60, **kw}
    return admin.post("/rounds", body)


def _delta(rng, scale=0.01):
    return {"W": rng.normal(0, scale, (64, 10)).astype(np.float32), "b": rng.normal(0, scale, 10).astype(np.float32)}


def _blob(dev, round_id, delta, n=100, **kw):
    return encode_plain(dev.key, delta, round_id=round_id, base_version=1, device_id=dev.id, num_samples=n, **kw)


def test_cohort_takes_only_devices_whose_heartbeat_says_charging_idle_and_wifi(admin, enroll):
    ok = [enroll(f"ok{i}") for i in range(3)]
    enroll("busy", idle=False)
    enroll("cell", wifi=False)
    r = _create(admin, fraction=1.0, min_clients=2)
    assert r.status_code == 201, r.json
    assert sorted(r.json["selected"]) == sorted(d.id for d in ok)
    assert r.json["cohort"]["eligible"] == 3


def test_fraction_and_min_clients_size_the_cohort_and_too_few_eligible_is_a_conflict(admin, enroll):
    for i in range(5):
        enroll(f"d{i}")
    r = _create(admin, fraction=0.2, min_clients=2)
    assert r.status_code == 201 and len(r.json["selected"]) == 2  # ceil(0.2*5)=1 < min_clients
    r = _create(admin, fraction=0.5, min_clients=2)
    assert len(r.json["selected"]) == 3
    r = _create(admin, min_clients=6)
    assert r.status_code == 409 and "eligible" in r.json["message"]


def test_selected_device_gets_global_params_equal_to_the_base_model_weights(admin, enroll, champion):
    d = enroll()
    other = enroll()
    r = _create(admin, min_clients=2).json
    got = d.get_round().json["round"]
    assert got["round_id"] == r["id"] and got["base_version"] == 1
    import base64
    W = np.frombuffer(base64.b64decode(got["params"]["W"]["data"]), np.float32).reshape(64, 10)
    np.testing.assert_array_equal(W, champion[0][0])
    assert other.get_round().json["round"]["round_id"] == r["id"]


def test_quorum_met_closes_with_the_weighted_mean_and_duplicate_upload_is_counted_once(admin, enroll, fleet):
    devs = [enroll(f"d{i}") for i in range(3)]
    rid = _create(admin, min_clients=3, quorum=2).json["id"]
    rng = np.random.default_rng(1)
    deltas = [_delta(rng) for _ in devs]
    ns = [10, 30, 60]
    blobs = [_blob(d, rid, x, n) for d, x, n in zip(devs, deltas, ns, strict=True)]
    for d, b in zip(devs, blobs, strict=True):
        r = d.upload(rid, b)
        assert r.status_code == 200 and r.json["already_counted"] is False, r.json
    r = devs[0].upload(rid, blobs[0])  # a retry of an acknowledged upload: idempotent, not counted again
    assert r.status_code == 200 and r.json["already_counted"] is True
    out = admin.post(f"/rounds/{rid}/close").json
    assert out["state"] == "closed" and out["result"]["accepted"] == 3
    cand = np.load(fleet.config.instance_dir / "rounds" / rid / "candidate.npz")
    base = np.load(fleet.config.instance_dir / "rounds" / rid / "global.npz")
    want = base["W"].astype(np.float64) + sum(n * x["W"].astype(np.float64) for x, n in zip(deltas, ns, strict=True)) / sum(ns)
    np.testing.assert_allclose(cand["W"], want.astype(np.float32), rtol=0, atol=1e-6)


def test_deadline_without_quorum_fails_cleanly_and_late_update_is_rejected(admin, enroll, fleet):
    devs = [enroll(f"d{i}") for i in range(2)]
    rid = _create(admin, min_clients=2, deadline_s=0.5).json["id"]
    rng = np.random.default_rng(2)
    assert devs[0].upload(rid, _blob(devs[0], rid, _delta(rng))).status_code == 200
    time.sleep(0.6)
    r = devs[1].upload(rid, _blob(devs[1], rid, _delta(rng)))
    assert r.status_code == 422 and r.json["reason"] == "late"
    st = admin.get(f"/rounds/{rid}").json  # status closes a round past its deadline
    assert st["state"] == "failed" and "quorum not met: 1" in st["reason"]
    assert [x["reason"] for x in st["rejected"]] == ["late"]
    r = devs[1].upload(rid, _blob(devs[1], rid, _delta(rng)))
    assert r.status_code == 422 and r.json["reason"] == "late"
    assert devs[1].get_round().json["round"] is None


def test_upload_to_a_round_closed_before_its_deadline_is_rejected_as_round_closed(admin, enroll):
    devs = [enroll(f"d{i}") for i in range(2)]
    rid = _create(admin, min_clients=2, quorum=1).json["id"]
    rng = np.random.default_rng(9)
    assert devs[0].upload(rid, _blob(devs[0], rid, _delta(rng))).status_code == 200
    assert admin.post(f"/rounds/{rid}/close").json["state"] == "closed"
    r = devs[1].upload(rid, _blob(devs[1], rid, _delta(rng)))
    assert r.status_code == 422 and r.json["reason"] == "round_closed"
    assert admin.post(f"/rounds/{rid}/close").status_code == 409


def test_deadline_with_quorum_closes_via_the_background_tick(admin, enroll, fleet):
    devs = [enroll(f"d{i}") for i in range(2)]
    rid = _create(admin, min_clients=2, deadline_s=0.4).json["id"]
    rng = np.random.default_rng(3)
    for d in devs:
        assert d.upload(rid, _blob(d, rid, _delta(rng))).status_code == 200
    from fleet_server._rounds import tick_rounds
    assert tick_rounds(fleet, time.time()) == []  # not due yet
    assert tick_rounds(fleet, time.time() + 1) == [rid]
    assert admin.get(f"/rounds/{rid}").json["state"] == "closed"


def test_update_signed_for_another_round_is_rejected_as_wrong_round(admin, enroll):
    devs = [enroll(f"d{i}") for i in range(2)]
    a = _create(admin, min_clients=2).json["id"]
    b = _create(admin, min_clients=2).json["id"]
    blob = _blob(devs[0], a, _delta(np.random.default_rng(4)))
    assert devs[0].upload(a, blob).status_code == 200
    r = devs[0].upload(b, blob)  # replayed into round b
    assert r.status_code == 422 and r.json["reason"] == "wrong_round"
    st = admin.get(f"/rounds/{b}").json
    assert st["accepted"] == [] and st["rejected"][0]["reason"] == "wrong_round"


@pytest.mark.parametrize("bad,reason", [
    ("other_device_key", "bad_signature"), ("nan", "non_finite"), ("shape", "shape_mismatch"),
    ("base", "wrong_base_version"), ("not_selected", "not_selected"),
])
def test_invalid_updates_are_rejected_with_their_reason_and_not_folded(admin, enroll, bad, reason):
    from edgepack import generate_key

    devs = [enroll(f"d{i}") for i in range(2)]
    rid = _create(admin, min_clients=2, fraction=1.0).json["id"]
    outsider = enroll("late-joiner")
    d, delta, kw = devs[0], _delta(np.random.default_rng(5)), {}
    key = d.key
    if bad == "other_device_key":
        key = generate_key()
    elif bad == "nan":
        delta["W"][0, 0] = np.nan
    elif bad == "shape":
        delta["b"] = np.zeros(11, np.float32)
    elif bad == "not_selected":
        d = outsider
    base = 2 if bad == "base" else 1
    blob = encode_plain(key, delta, round_id=rid, base_version=base, device_id=d.id, num_samples=50, **kw)
    r = d.upload(rid, blob)
    assert r.status_code == 422 and r.json["reason"] == reason, r.json
    st = admin.get(f"/rounds/{rid}").json
    assert st["accepted"] == [] and st["rejected"][0]["reason"] == reason


def _train_round(admin, enroll, delta_of, eval_npz, threshold=0.01):
    devs = [enroll(f"d{i}") for i in range(2)]
    rid = _create(admin, min_clients=2, evaluation={"path": str(eval_npz), "threshold": threshold}).json["id"]
    for d in devs:
        assert d.upload(rid, _blob(d, rid, delta_of(), 100)).status_code == 200
    return admin.post(f"/rounds/{rid}/close").json


def test_better_candidate_is_promoted_signed_with_the_federated_key_and_rolled_out_in_waves(
        federated_key, admin, enroll, champion, eval_npz, fleet):
    (W0, b0), (W1, b1) = champion
    out = _train_round(admin, enroll, lambda: {"W": W1 - W0, "b": b1 - b0}, eval_npz)
    res = out["result"]
    assert res["promoted"] is True and res["candidate_accuracy"] > res["champion_accuracy"], res
    assert out["reason"] is None and res["release"]["version"] == 2 and res["release"]["kind"] == "params"
    epu = (fleet.config.instance_dir / "rounds" / out["id"] / "candidate.epu").read_bytes()
    u, _ = parse_param_update(epu, Trust.of([federated_key.public]))  # really signed by the federated key
    assert (u.model, u.version, u.base_version) == ("digits", 2, 1)
    rel = admin.get(f"/releases/{res['release']['id']}")
    assert rel.status_code == 200 and rel.json["kind"] == "params" and rel.json["version"] == 2
    ro = admin.post("/rollouts", {"release": {"name": "digits", "version": 2}, "group": "default",
                                  "waves": [50, 100], "gates": {"min_reports": 1}})
    assert ro.status_code == 201 and ro.json["state"] == "running", ro.json  # the same health-gated waves


def test_worse_candidate_is_refused_and_nothing_is_released(federated_key, admin, enroll, eval_npz, fleet):
    rng = np.random.default_rng(6)
    out = _train_round(admin, enroll, lambda: _delta(rng, scale=3.0), eval_npz)
    res = out["result"]
    assert res["promoted"] is False and res["release"] is None
    assert res["candidate_accuracy"] < res["champion_accuracy"] - 0.01
    assert "worse than champion" in out["reason"]
    assert not (fleet.config.instance_dir / "rounds" / out["id"] / "candidate.epu").exists()


def test_update_folded_but_uncommitted_before_a_crash_is_recorded_on_retry_without_a_second_fold(
        admin, enroll, fleet):
    """The disk state a SIGKILL between ``acc.save`` and the row's commit leaves: the sums hold the
    update, the database does not. The device's retry must record it and not fold it again."""
    from edgepack.federated import ParamSpec, RoundAccumulator, RoundContext, validate_update

    devs = [enroll(f"d{i}") for i in range(2)]
    rid = _create(admin, min_clients=2).json["id"]
    delta = _delta(np.random.default_rng(8))
    blob = _blob(devs[0], rid, delta, 40)
    spec = ParamSpec.from_params(delta)
    u = validate_update(blob, RoundContext(rid, 1, spec), {devs[0].id: devs[0].key.public})
    acc = RoundAccumulator(spec)
    acc.fold(u.update_id, u.params, 40.0)
    acc.save(fleet.config.instance_dir / "rounds" / rid / "acc.state")
    r = devs[0].upload(rid, blob)
    assert r.status_code == 200 and r.json["count"] == 1
    after = RoundAccumulator.load(fleet.config.instance_dir / "rounds" / rid / "acc.state", spec)
    assert after.count == 1 and after.weight_sum == 40.0
    assert [x["update_id"] for x in admin.get(f"/rounds/{rid}").json["accepted"]] == [u.update_id]


def test_update_upload_is_not_capped_at_the_json_body_limit(admin, enroll, fleet):
    devs = [enroll(f"d{i}") for i in range(2)]
    rid = _create(admin, min_clients=2).json["id"]
    big = {f"m{i:06d}": float(i) for i in range(90_000)}  # > max_json_bytes of signed header
    blob = _blob(devs[0], rid, _delta(np.random.default_rng(12)), metrics=big)
    assert len(blob) > fleet.config.max_json_bytes
    r = devs[0].upload(rid, blob)
    assert r.status_code == 200, r.json


def test_unusable_eval_set_fails_the_round_cleanly_instead_of_looping(admin, enroll, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((3, 64), np.float32))  # no x / y arrays
    devs = [enroll(f"d{i}") for i in range(2)]
    rid = _create(admin, min_clients=2, evaluation={"path": str(bad)}).json["id"]
    for d in devs:
        assert d.upload(rid, _blob(d, rid, _delta(np.random.default_rng(13)))).status_code == 200
    out = admin.post(f"/rounds/{rid}/close").json
    assert out["state"] == "failed" and "KeyError" in out["reason"]
    assert admin.post(f"/rounds/{rid}/close").status_code == 409
