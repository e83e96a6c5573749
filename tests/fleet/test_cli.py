"""``edgepack fleet init``: creates the instance and prints the first admin token once."""

from __future__ import annotations

import json
import stat

from edgepack.cli import main


def test_init_creates_the_first_admin_token_and_refuses_a_second_init(tmp_path, trust_file, capsys):
    inst = tmp_path / "inst"
    assert main(["fleet", "init", "--instance", str(inst), "--release-trust", str(trust_file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    token = out["admin_token"]
    assert token.startswith("epa_") and len(token) > 40
    assert stat.S_IMODE((inst / "secret_key").stat().st_mode) == 0o600
    assert (inst / "release-trust.json").read_bytes() == trust_file.read_bytes()
    assert token.encode() not in (inst / "fleet.db").read_bytes()  # only its hash is stored
    assert main(["fleet", "init", "--instance", str(inst)]) == 2
    assert "already initialised" in capsys.readouterr().err

    from fleet_server import create_app, load_config

    app = create_app(load_config(inst, tick_interval_s=0))
    c = app.test_client()
    assert c.get("/api/v1/admin/groups").status_code == 401  # no default credentials
    r = c.get("/api/v1/admin/groups", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and [g["name"] for g in r.json["groups"]] == ["default"]


def test_serve_refuses_an_uninitialised_instance(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "secret_key").write_text("k" * 40)
    assert main(["fleet", "serve", "--instance", str(tmp_path / "x"), "--port", "1"]) == 3
    assert "fleet init" in capsys.readouterr().err


def test_fleet_audit_lists_filters_and_verifies_the_chain(tmp_path, trust_file, capsys):
    """``edgepack fleet audit``: init and admin-token are audited as 'cli'; --verify exits 5 on tampering."""
    from sqlalchemy import create_engine, text

    inst = tmp_path / "inst"
    assert main(["fleet", "init", "--instance", str(inst), "--release-trust", str(trust_file), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)["admin_token"]
    assert main(["fleet", "admin-token", "--instance", str(inst), "--name", "ci", "--json"]) == 0
    token = json.loads(capsys.readouterr().out)["admin_token"]
    assert main(["fleet", "audit", "--instance", str(inst), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [e["action"] for e in doc["entries"]] == ["cli.admin_token", "cli.init"]  # newest first
    assert {e["actor"] for e in doc["entries"]} == {"cli"} and doc["total"] == 2
    assert token not in json.dumps(doc) and first not in json.dumps(doc)  # tokens are never audited in clear
    assert main(["fleet", "audit", "--instance", str(inst), "--action", "cli.init", "--json"]) == 0
    assert [e["action"] for e in json.loads(capsys.readouterr().out)["entries"]] == ["cli.init"]
    assert main(["fleet", "audit", "--instance", str(inst)]) == 0
    assert "cli.admin_token" in capsys.readouterr().out
    assert main(["fleet", "audit", "--instance", str(inst), "--verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 2

    eng = create_engine(f"sqlite:///{inst / 'fleet.db'}")
    with eng.begin() as c:  # a superuser's edit: drop the trigger, rewrite history
        c.execute(text("DROP TRIGGER audit_log_no_update"))
        c.execute(text("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 1"))
    eng.dispose()
    assert main(["fleet", "audit", "--instance", str(inst), "--verify"]) == 5
    err = capsys.readouterr().err
    assert "audit row 1 was modified" in err and "Traceback" not in err
