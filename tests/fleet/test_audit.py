"""The audit trail (issue 8 item 7): every mutating admin route and every rollout decision
writes a row with actor, time and reason; the table is append-only (triggers on SQLite and
PostgreSQL); the hash chain catches edits made behind the triggers' back; concurrent
writers keep the chain whole; a schema-1 database is upgraded in place."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from fleet_server._audit import AuditChainError, record, verify
from fleet_server._models_audit import AuditEntry

GATES = {"min_reports": 2, "max_failure_rate": 0.2, "max_crashes": 0, "max_load_failures": 0}
#: a value for each URL argument, so every admin rule can be called
ARGS = {"token_id": "999", "device_id": "d-0000000000000000", "alert_id": "1", "release_id": "1",
        "rollout_id": "1", "action": "pause", "round_id": "r-1"}


def _rows(fleet, **where):
    with fleet.db.read() as s:
        q = select(AuditEntry).order_by(AuditEntry.seq)
        for k, v in where.items():
            q = q.where(getattr(AuditEntry, k) == v)
        return list(s.scalars(q))


def _append(fleet, n: int, actor: str = "system") -> None:
    for i in range(n):
        with fleet.db.write() as s:
            record(s, actor, "test.append", f"thing:{i}", f"reason {i}", {"i": i, "x": 0.1 * i})


def _drop_triggers(fleet) -> None:
    with fleet.db.engine.begin() as c:
        if fleet.db.is_sqlite:
            c.execute(text("DROP TRIGGER audit_log_no_update"))
            c.execute(text("DROP TRIGGER audit_log_no_delete"))
        else:
            c.execute(text("DROP TRIGGER audit_log_no_change ON audit_log"))


@pytest.mark.parametrize("stmt", ["UPDATE audit_log SET reason = 'nothing happened' WHERE seq = 2",
                                  "DELETE FROM audit_log WHERE seq = 3", "DELETE FROM audit_log"])
def test_the_database_refuses_to_change_or_remove_audit_rows(fleet, stmt):
    _append(fleet, 3)
    with pytest.raises(DBAPIError, match="append-only"), fleet.db.engine.begin() as c:
        c.execute(text(stmt))
    assert [e.reason for e in _rows(fleet)] == ["reason 0", "reason 1", "reason 2"]
    assert verify(fleet.db).rows == 3


def test_postgresql_also_refuses_truncate(fleet):
    if fleet.db.is_sqlite:
        pytest.skip("SQLite has no TRUNCATE (its DELETE trigger covers 'DELETE FROM audit_log')")
    _append(fleet, 1)
    with pytest.raises(DBAPIError, match="append-only"), fleet.db.engine.begin() as c:
        c.execute(text("TRUNCATE audit_log"))
    assert len(_rows(fleet)) == 1


@pytest.mark.parametrize("tamper,message", [
    ("UPDATE audit_log SET reason = 'edited' WHERE seq = 3", "modified"),
    ("UPDATE audit_log SET actor = 'system' WHERE seq = 2", "modified"),
    ("DELETE FROM audit_log WHERE seq = 2", "missing"),
    ("DELETE FROM audit_log WHERE seq = 5", None),  # dropping the newest row is invisible to a chain; see docs
    ("UPDATE audit_log SET prev_hash = hash WHERE seq = 4", "does not link"),
])
def test_verify_finds_rows_edited_behind_the_triggers_back(fleet, tamper, message):
    _append(fleet, 5, actor="admin:ci#1")
    assert verify(fleet.db).rows == 5
    _drop_triggers(fleet)  # what a database superuser could do
    with fleet.db.engine.begin() as c:
        c.execute(text(tamper))
    if message is None:
        assert verify(fleet.db).rows == 4
        return
    with pytest.raises(AuditChainError, match=message):
        verify(fleet.db)


def test_concurrent_writers_on_two_engines_keep_one_unbroken_chain(fleet, fleet_config):
    """Two Database objects are two connection pools, as two gunicorn workers have."""
    from fleet_server import Database

    other = Database(fleet_config.db_url)
    errors: list[BaseException] = []

    def work(db, tag):
        try:
            for i in range(25):
                with db.write() as s:
                    record(s, f"system:{tag}", "test.concurrent", f"{tag}:{i}")
        except BaseException as e:  # noqa: BLE001 (reported by the assertion below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(db, f"{n}{t}")) for n, db in (("a", fleet.db), ("b", other))
               for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    other.dispose()
    assert not errors, errors
    rep = verify(fleet.db)
    assert rep.rows == 150 and [e.seq for e in _rows(fleet)] == list(range(1, 151))


def _admin_mutating_rules(app):
    return [(r, m) for r in app.url_map.iter_rules() if r.rule.startswith("/api/v1/admin")
            for m in sorted(r.methods & {"POST", "PUT", "PATCH", "DELETE"})]


def _url(rule) -> str:
    url = rule.rule
    for arg in rule.arguments:
        for form in (f"<{arg}>", f"<int:{arg}>", f"<path:{arg}>"):
            url = url.replace(form, ARGS[arg])
    assert "<" not in url, f"add a value for {rule.rule} to ARGS"
    return url


def test_every_mutating_admin_route_writes_an_audit_row_whatever_its_outcome(app, fleet, admin, admin_token):
    from fleet_server._models import AdminToken

    with fleet.db.read() as s:
        token_id = s.scalar(select(AdminToken.id).where(AdminToken.name == "test-admin"))
    rules = _admin_mutating_rules(app)
    assert {r.endpoint for r, _ in rules} >= {"admin.new_admin_token", "admin.revoke_admin_token",
                                              "admin.patch_device", "releases.upload", "rollouts.start",
                                              "rollouts.action", "rounds.create", "rounds.close"}
    for rule, method in rules:
        before = len(_rows(fleet))
        r = admin.client.open(_url(rule), method=method, json={"reason": "audit test", "name": "x1"},
                              headers=admin.headers)
        rows = _rows(fleet)[before:]
        api = [e for e in rows if e.action == f"api.{rule.endpoint}"]
        assert len(api) == 1, (method, rule.rule, [e.action for e in rows])
        e = api[0]
        assert e.actor == f"admin:test-admin#{token_id}" and e.target == _url(rule)
        assert abs(e.at - time.time()) < 60
        # a change carries its row in its own transaction; a request that changed nothing is recorded with its status
        assert '"recorded":"with the change"' in e.details or f'"status":{r.status_code}' in e.details
        if r.status_code < 400 and r.is_json and isinstance(r.json, dict) and "token" in r.json:
            assert r.json["token"] not in e.details  # a new token is never written to the log
    assert verify(fleet.db).rows == len(_rows(fleet))


def test_an_admin_change_and_its_audit_row_commit_together_before_the_response(app, fleet, admin):
    """A crash after the change commits, before the response is sent, must not lose the record."""
    seen = {}

    @app.after_request  # registered after the audit hook, so Flask runs it first
    def _look(resp):
        seen["rows"] = [e.action for e in _rows(fleet)]
        return resp

    r = admin.post("/groups", {"name": "lab", "reason": "new site"})
    assert r.status_code in (200, 201), r.json
    assert seen["rows"] == ["api.admin.create_group"]
    rows = _rows(fleet)
    assert [e.action for e in rows] == ["api.admin.create_group"]  # recorded once, not again after the response
    assert rows[0].reason == "new site"


def test_a_refused_admin_request_is_recorded_after_the_response_with_its_status(fleet, admin):
    r = admin.post("/groups", {"name": 5})
    assert r.status_code == 400
    (e,) = _rows(fleet)
    assert e.action == "api.admin.create_group" and '"status":400' in e.details


def test_reads_and_unauthenticated_requests_write_nothing(app, fleet, admin):
    admin.get("/devices")
    admin.get("/audit")
    admin.client.post("/api/v1/admin/groups", json={"name": "g"})  # no token: refused, not an admin action
    assert _rows(fleet) == []


def test_no_route_can_change_the_audit_log(app):
    for rule in app.url_map.iter_rules():
        if "audit" in rule.rule:
            assert rule.methods - {"HEAD", "OPTIONS"} == {"GET"}, rule.rule


@pytest.fixture
def rollout_v2(admin, enroll, make_bundle):
    devs = [enroll(name=f"dev{i}") for i in range(4)]
    assert admin.upload(make_bundle(1)).status_code == 201
    r = admin.post("/rollouts", {"release": {"name": "digits", "version": 1}, "group": "default", "waves": [100],
                                 "gates": GATES})
    for d in devs:
        d.report("install", 1, ok=True)
    assert admin.get(f"/rollouts/{r.json['id']}").json["state"] == "completed"
    assert admin.upload(make_bundle(2)).status_code == 201
    r = admin.post("/rollouts", {"release": {"name": "digits", "version": 2}, "group": "default",
                                 "waves": [50, 100], "gates": GATES, "timing": {"wave_deadline_s": 60}})
    return devs, r.json["id"]


def test_manual_rollout_decisions_are_recorded_with_the_admins_reason(admin, fleet, rollout_v2):
    _, rid = rollout_v2
    assert admin.post(f"/rollouts/{rid}/pause", {"reason": "looking at <crash> logs"}).status_code == 200
    assert admin.post(f"/rollouts/{rid}/resume", {"reason": "logs are fine"}).status_code == 200
    assert admin.post(f"/rollouts/{rid}/rollback", {"reason": "customer asked"}).status_code == 200
    rows = [e for e in _rows(fleet, target=f"rollout:{rid}")]
    assert [e.action for e in rows] == ["rollout.started", "rollout.paused", "rollout.resumed", "rollout.rollback"]
    assert {e.actor for e in rows} == {next(e.actor for e in _rows(fleet) if e.actor.startswith("admin:"))}
    assert rows[1].reason == "looking at <crash> logs" and "customer asked" in rows[3].reason


def test_an_abort_is_recorded_with_the_admins_reason(admin, fleet, rollout_v2):
    _, rid = rollout_v2
    assert admin.post(f"/rollouts/{rid}/abort", {"reason": "wrong group"}).json["state"] == "aborted"
    rows = _rows(fleet, target=f"rollout:{rid}", action="rollout.aborted")
    assert len(rows) == 1 and rows[0].actor.startswith("admin:test-admin#") and "wrong group" in rows[0].reason


def test_a_tripped_gate_is_an_automatic_rollback_by_the_system(admin, fleet, rollout_v2):
    devs, rid = rollout_v2
    wave = [d for d in devs if (d.assignment().json["release"] or {}).get("version") == 2]
    for d in wave[:2]:
        d.report("crash", 2, ok=False, reason="SIGSEGV")
    rows = _rows(fleet, target=f"rollout:{rid}", action="rollout.auto_rollback")
    assert len(rows) == 1 and rows[0].actor == "system" and "health gate tripped" in rows[0].reason


def test_a_missed_deadline_is_an_automatic_rollback_by_the_system(fleet, rollout_v2):
    from fleet_server._rollouts import tick

    _, rid = rollout_v2
    assert tick(fleet, rid, now=time.time() + 61) == "rolled_back"
    rows = _rows(fleet, target=f"rollout:{rid}", action="rollout.auto_rollback")
    assert len(rows) == 1 and rows[0].actor == "system" and "missed its deadline" in rows[0].reason
    assert verify(fleet.db).rows == len(_rows(fleet))


def test_a_v1_database_is_upgraded_in_place(fleet_config):
    """A database written by the previous release: no audit_log/rate_limits, schema_version 1, some data."""
    from alembic import command

    from fleet_server import Database
    from fleet_server._migrate import _config
    from fleet_server._models import SCHEMA_VERSION, Group, Meta

    db = Database(fleet_config.db_url)
    with db.engine.begin() as conn:  # the first release's tables, exactly (revision 0001), unstamped
        command.upgrade(_config(conn), "0001")
        conn.execute(text("DROP TABLE alembic_version"))
    with db.write() as s:
        s.add(Meta(key="schema_version", value="1"))
        s.add(Group(name="lab"))
    with pytest.raises(Exception, match="another schema version"):
        db.check_schema(upgrade=False)
    db.check_schema()  # what serve / admin-token run first: upgrades 1 -> the current version
    with db.read() as s:
        assert s.get(Meta, "schema_version").value == str(SCHEMA_VERSION)
        assert s.scalar(select(Group.name)) == "lab"  # the old data is kept
        rows = list(s.scalars(select(AuditEntry)))
    assert [(e.action, e.actor) for e in rows] == [("schema.upgrade", "system")]
    with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as c:
        c.execute(text("DELETE FROM audit_log"))  # the triggers came with the upgrade
    db.create_schema()  # idempotent: a second start changes nothing
    assert verify(db).rows == 1
    db.dispose()


def test_an_unknown_schema_version_is_refused(fleet_config):
    from edgepack import ConfigError
    from fleet_server import Database
    from fleet_server._models import Meta

    db = Database(fleet_config.db_url)
    db.create_schema()
    with db.write() as s:
        s.get(Meta, "schema_version").value = "99"
    with pytest.raises(ConfigError, match="schema version 99"):
        db.create_schema()
    db.dispose()


def test_the_admin_api_lists_the_audit_log_newest_first_with_filters(fleet, admin):
    _append(fleet, 5, actor="admin:ci#3")
    _append(fleet, 3, actor="system")
    r = admin.get("/audit?actor=admin&per_page=2&page=2")
    assert r.status_code == 200 and r.json["total"] == 5
    assert [e["seq"] for e in r.json["entries"]] == [3, 2]
    e = r.json["entries"][0]
    assert e["actor"] == "admin:ci#3" and e["details"] == {"i": 2, "x": 0.2} and len(e["hash"]) == 64
    assert admin.get("/audit?action=test").json["total"] == 8
    assert admin.get("/audit?action=test.append&actor=system").json["total"] == 3
