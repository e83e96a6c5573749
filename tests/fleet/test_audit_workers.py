"""Two real gunicorn workers (``edgepack fleet serve --workers 2``) on one database: concurrent
admin actions leave one unbroken audit chain, and the rate limit is one count shared by both
workers (it lives in the database, not in a worker's memory). SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest
from support.server import CLI, Server, free_port, http_json

pytestmark = pytest.mark.slow


@pytest.fixture
def served(tmp_path, trust_file, database_url):
    env = {"EDGEPACK_DATABASE_URL": database_url, "EDGEPACK_ENROLL_FAILURE_LIMIT": "12"}
    import os

    inst = tmp_path / "instance"
    out = subprocess.run([*CLI, "fleet", "init", "--instance", str(inst), "--release-trust", str(trust_file),
                          "--json"], capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    server = Server(inst, free_port(), workers=2, env=env)
    server.start()
    yield server, json.loads(out.stdout)["admin_token"], database_url
    server.stop()


def test_two_workers_share_one_audit_chain_and_one_rate_limit_count(served):
    """One server start per database for both checks: starting gunicorn is the slow part."""
    from fleet_server import Database
    from fleet_server._audit import verify

    server, token, url = served
    h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    codes: list[int] = []

    def work(t: int) -> None:
        for i in range(10):
            body = json.dumps({"name": f"g{t}-{i}"}).encode()
            codes.append(http_json("POST", f"{server.url}/api/v1/admin/groups", body, h)[0])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert codes == [201] * 80
    db = Database(url)
    try:
        rep = verify(db)
        with db.read() as s:
            from sqlalchemy import func, select

            from fleet_server._models_audit import AuditEntry

            n = s.scalar(select(func.count()).select_from(AuditEntry).where(
                AuditEntry.action == "api.admin.create_group"))
    finally:
        db.dispose()
    assert n == 80 and rep.rows >= 81  # plus 'cli.init'

    body = json.dumps({"token": "epe_guess", "public_key": "ab" * 32}).encode()
    # a new connection per request, so the kernel spreads them over both workers
    codes = [http_json("POST", f"{server.url}/api/v1/enroll", body, {"Content-Type": "application/json"})[0]
             for _ in range(30)]
    assert codes[:12] == [401] * 12 and set(codes[12:]) == {429}, codes
