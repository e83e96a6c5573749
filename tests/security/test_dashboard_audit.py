"""The dashboard's audit page (issue 8 item 7): linked from the nav, filtered by actor and
action, paginated, and every field HTML-escaped (a reason is free text from an admin)."""

from __future__ import annotations

import re

from fleet_server._audit import record
from fleet_server._dashboard import AUDIT_PER_PAGE


def _fill(fleet, n: int, **kw) -> None:
    with fleet.db.write() as s:
        for i in range(n):
            record(s, kw.get("actor", "system"), kw.get("action", "test.fill"), f"thing:{i}", f"reason {i}")


def _seqs(html: str) -> list[int]:
    return [int(x) for x in re.findall(r"<tr><td>(\d+)</td>", html)]


def test_the_audit_page_is_linked_from_the_nav(logged_in):
    client, _ = logged_in
    assert 'href="/audit"' in client.get("/").get_data(as_text=True)
    assert client.get("/audit").status_code == 200


def test_the_audit_page_needs_a_session(client):
    r = client.get("/audit")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login")


def test_the_audit_page_pages_newest_first(logged_in, fleet):
    client, _ = logged_in
    before = _seqs(client.get("/audit").get_data(as_text=True))  # the login itself is an entry
    _fill(fleet, AUDIT_PER_PAGE + 7)
    total = len(before) + AUDIT_PER_PAGE + 7
    p1 = client.get("/audit").get_data(as_text=True)
    p2 = client.get("/audit?page=2").get_data(as_text=True)
    assert _seqs(p1) == list(range(total, total - AUDIT_PER_PAGE, -1))
    assert _seqs(p2) == list(range(total - AUDIT_PER_PAGE, 0, -1))
    assert 'rel="next"' in p1 and 'rel="prev"' in p2 and 'rel="next"' not in p2
    assert _seqs(client.get("/audit?page=999").get_data(as_text=True)) == []
    assert client.get("/audit?page=-1").status_code == 200  # junk is page 1, not an error


def test_the_audit_page_filters_by_actor_and_action(logged_in, fleet):
    client, _ = logged_in
    _fill(fleet, 3, actor="admin:ci#7", action="rollout.paused")
    _fill(fleet, 2, actor="system", action="rollout.auto_rollback")
    _fill(fleet, 4, actor="device:d-1", action="device.enroll")
    n = lambda q: len(_seqs(client.get(f"/audit?{q}").get_data(as_text=True)))  # noqa: E731
    assert n("actor=admin:ci%237") == 3 and n("actor=admin") == 3 and n("actor=admin:ci") == 3
    assert n("action=rollout") == 5 and n("action=rollout.paused") == 3 and n("action=roll") == 0
    assert n("actor=system&action=rollout") == 2 and n("actor=device") == 4
    assert n("actor=%25") == 0  # LIKE wildcards are literal


def test_every_audit_field_is_escaped(logged_in, fleet):
    client, _ = logged_in
    evil = '<script>alert(1)</script><img src=x onerror=alert(2)>"\''
    with fleet.db.write() as s:
        record(s, f"admin:{evil}", f"x.{evil}"[:64], evil, evil, {"k": evil})
    html = client.get("/audit").get_data(as_text=True)
    assert "<script>alert(1)" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_dashboard_actions_are_audited_with_the_session_admin(logged_in, fleet):
    from sqlalchemy import select

    from fleet_server._models import Alert
    from fleet_server._models_audit import AuditEntry

    client, csrf = logged_in
    with fleet.db.write() as s:
        s.add(Alert(level="warning", kind="test", message="m"))
    assert client.post("/alerts/1/ack", data={"csrf_token": "0" * 64}).status_code == 400  # refused: not audited
    assert client.post("/alerts/1/ack", data={"csrf_token": csrf}).status_code == 302
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 302
    with fleet.db.read() as s:
        rows = [(e.actor, e.action, e.target) for e in s.scalars(select(AuditEntry).order_by(AuditEntry.seq))]
    actor = rows[0][0]
    assert actor.startswith("dashboard:test-admin#")
    assert rows == [(actor, "dashboard.login", rows[0][2]), (actor, "api.dashboard.ack", "/alerts/1/ack"),
                    (actor, "api.dashboard.logout", "/logout")]
