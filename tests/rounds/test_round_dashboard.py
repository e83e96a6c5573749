"""The round page: participants, rejected updates with reasons, and accuracy per round as inline SVG."""

from __future__ import annotations

import re
import time

import numpy as np

from edgepack.federated._update import encode_plain


def _login(client, fleet, admin):
    from fleet_server._auth import hash_token
    from fleet_server._models import AdminToken

    token = admin.headers["Authorization"].split()[1]
    with fleet.db.read() as s:
        row = s.query(AdminToken).filter_by(token_hash=hash_token(token)).one()
    with client.session_transaction() as sess:
        sess["admin_id"], sess["admin_hash"] = row.id, row.token_hash
        sess["issued_at"] = sess["seen_at"] = time.time()  # a session without them has expired


def test_round_page_lists_participants_rejections_with_reasons_and_plots_accuracy_per_round(
        client, fleet, admin, enroll, champion, eval_npz):
    (W0, b0), (W1, b1) = champion
    devs = [enroll(f"d{i}") for i in range(3)]
    assert client.get("/rounds").status_code == 302  # login required
    _login(client, fleet, admin)
    ids = []
    for dw, db in [((W1 - W0) / 2, (b1 - b0) / 2), (W1 - W0, b1 - b0)]:
        rid = admin.post("/rounds", {"model": "digits", "base_version": 1, "params": ["W", "b"], "min_clients": 3,
                                     "quorum": 2, "evaluation": {"path": str(eval_npz)}}).json["id"]
        ids.append(rid)
        for d in devs[:2]:
            blob = encode_plain(d.key, {"W": dw, "b": db}, round_id=rid, base_version=1, device_id=d.id,
                                num_samples=50)
            assert d.upload(rid, blob).status_code == 200
        nan = {"W": np.full((64, 10), np.nan, np.float32), "b": np.zeros(10, np.float32)}
        bad = encode_plain(devs[2].key, nan, round_id=rid, base_version=1, device_id=devs[2].id, num_samples=5)
        assert devs[2].upload(rid, bad).json["reason"] == "non_finite"
        assert admin.post(f"/rounds/{rid}/close").json["state"] == "closed"
    html = client.get(f"/rounds/{ids[1]}").get_data(as_text=True)
    for d in devs:
        assert d.id in html
    rejected = html.split('id="rejected"')[1]
    assert "non_finite" in rejected and devs[2].id in rejected and "NaN" in rejected
    assert "no accepted update" in html.split('id="participants"')[1].split("</table>")[0]
    svg = re.search(r"<svg[^>]*>.*?</svg>", html, re.S).group(0)
    assert "2 samples" in svg and "polyline" in svg
    st = admin.get(f"/rounds/{ids[1]}").json
    assert f"{st['result']['candidate_accuracy']:.3g}" in svg  # the max of the two rounds is the second one
    listing = client.get("/rounds").get_data(as_text=True)
    assert all(i in listing for i in ids)
    assert client.get("/rounds/r-missing").status_code == 404
