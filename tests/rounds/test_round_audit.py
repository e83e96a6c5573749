"""Round decisions are in the audit trail (issue 8 item 7): open (by the admin), close or fail
(by the admin's close, or by the system at the deadline), promote or reject the candidate,
and the stored release, each with its reason."""

from __future__ import annotations

import time

import numpy as np
from sqlalchemy import select

from edgepack.federated._update import encode_plain
from fleet_server._audit import verify
from fleet_server._models_audit import AuditEntry


def _round_rows(fleet, rid):
    with fleet.db.read() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.target == f"round:{rid}")
                              .order_by(AuditEntry.seq)))


def _create(admin, **kw):
    body = {"model": "digits", "base_version": 1, "params": ["W", "b"], "min_clients": 2, "deadline_s": 60, **kw}
    r = admin.post("/rounds", body)
    assert r.status_code == 201, r.json
    return r.json["id"]


def _upload(dev, rid, delta):
    blob = encode_plain(dev.key, delta, round_id=rid, base_version=1, device_id=dev.id, num_samples=100)
    assert dev.upload(rid, blob).status_code == 200


def test_a_promoted_round_records_open_close_promote_and_publish(federated_key, admin, enroll, champion,
                                                                 eval_npz, fleet):
    (W0, b0), (W1, b1) = champion
    devs = [enroll(f"d{i}") for i in range(2)]
    rid = _create(admin, evaluation={"path": str(eval_npz), "threshold": 0.01})
    for d in devs:
        _upload(d, rid, {"W": W1 - W0, "b": b1 - b0})
    assert admin.post(f"/rounds/{rid}/close").json["result"]["promoted"] is True
    rows = _round_rows(fleet, rid)
    assert [e.action for e in rows] == ["round.open", "round.closed", "round.promote", "round.publish"]
    admin_actor = rows[0].actor
    assert admin_actor.startswith("admin:test-admin#") and {e.actor for e in rows[:3]} == {admin_actor}
    assert '"candidate_accuracy"' in rows[1].details and '"version":2' in rows[3].details
    assert verify(fleet.db).rows > 0


def test_a_worse_candidate_is_recorded_as_rejected_with_the_reason(federated_key, admin, enroll, eval_npz, fleet):
    rng = np.random.default_rng(6)
    devs = [enroll(f"d{i}") for i in range(2)]
    rid = _create(admin, evaluation={"path": str(eval_npz), "threshold": 0.01})
    for d in devs:
        _upload(d, rid, {"W": rng.normal(0, 3.0, (64, 10)).astype(np.float32),
                         "b": rng.normal(0, 3.0, 10).astype(np.float32)})
    admin.post(f"/rounds/{rid}/close")
    rows = _round_rows(fleet, rid)
    assert [e.action for e in rows] == ["round.open", "round.closed", "round.reject"]
    assert "worse than champion" in rows[2].reason


def test_a_round_failed_at_its_deadline_is_the_systems_decision(admin, enroll, fleet):
    from fleet_server._rounds import tick_rounds

    [enroll(f"d{i}") for i in range(2)]
    rid = _create(admin, deadline_s=0.3)
    time.sleep(0.4)
    assert tick_rounds(fleet) == [rid]
    rows = _round_rows(fleet, rid)
    assert [(e.action, e.actor) for e in rows][1:] == [("round.failed", "system")]
    assert "quorum not met" in rows[1].reason
