"""The agent loop takes part in rounds: real fleet server (TUF) over HTTP on 127.0.0.1, real agents with
A/B install stores, real onnxruntime and the runtime's trainer. Eligibility comes from a conditions
file the agent re-reads; the deadline is honoured; the memory of answered rounds and the error-feedback
residual survive a restart; a promoted round's release is rolled out, installed, and trained on next."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgepack import Trust

ALL_TRUE = {"charging": True, "idle": True, "wifi": True}


@pytest.fixture
def database_url(tmp_path):
    """SQLite only: these tests are about the agent; the rounds' database behaviour (both SQLite and
    PostgreSQL) is covered by test_rounds_api.py and test_round_rollout.py."""
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture
def live(federated_key, app, admin, fleet):
    from werkzeug.serving import make_server

    srv = make_server("127.0.0.1", 0, app, threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()
    t.join(timeout=10)


@pytest.fixture
def make_agent(live, admin, fleet, federated_key, release_key, digits, tmp_path):
    from runtime import InstallStore
    from runtime.agent import Agent, AgentConfig, StoreInstaller

    root = (fleet.config.instance_dir / "tuf" / "repo" / "metadata" / "1.root.json").read_bytes()
    trust = Trust.of([release_key.public])

    def make(i: int, n: int = 3, enroll: bool = True, **cfg):
        state = tmp_path / f"dev{i}"
        state.mkdir(exist_ok=True)
        x, y, _, _ = digits
        keep = (y % n) == i  # non-IID: a few classes per device
        np.savez(state.parent / f"data{i}.npz", x=x[keep][:150], y=y[keep][:150])
        cond = state.parent / f"cond{i}.json"
        if not cond.exists():
            cond.write_text(json.dumps(ALL_TRUE))
        config = AgentConfig(poll_interval_s=1, backoff_base_s=1, backoff_max_s=4, timeout_s=10,
                             fl_data=str(state.parent / f"data{i}.npz"), conditions_file=str(cond),
                             **{"fl_min_time_s": 2.0, "fl_epochs": 10, **cfg})
        store = InstallStore(state / "store", trust, update_trust=Trust.of([federated_key.public]))
        agent = Agent(state, live, StoreInstaller(store), trust, root, config=config)
        if enroll:
            tok = admin.post("/enrollment-tokens", {"group": "default"}).json["token"]
            agent.enroll(tok, f"dev{i}")
        return agent

    return make


def _install_v1(admin, agents):
    r = admin.post("/rollouts", {"release": {"name": "digits", "version": 1}, "group": "default", "waves": [100],
                                 "gates": {"min_reports": len(agents)}})
    assert r.status_code == 201, r.json
    for a in agents:
        a.step()
    assert [a.installer.active_version() for a in agents] == [1] * len(agents)


def _set_conditions(agent, **facts):
    Path(agent.config.conditions_file).write_text(json.dumps({**ALL_TRUE, **facts}))


def test_agents_train_on_their_own_data_and_a_promoted_round_rolls_out_and_is_trained_on_next(
        make_agent, admin, eval_npz):
    agents = [make_agent(i) for i in range(3)]
    _install_v1(admin, agents)
    plan = {"group": "default", "waves": [100], "gates": {"min_reports": 3}}
    r1 = admin.post("/rounds", {"model": "digits", "base_version": 1, "params": ["W", "b"], "min_clients": 3,
                                "codecs": ["int8"], "evaluation": {"path": str(eval_npz)}, "rollout": plan}).json
    for a in agents:
        a.step()
        assert a.participant.last["status"] == "uploaded" and a.participant.last["codec"] == "int8", a.participant.last
        assert (a.dir / "fl-feedback.state").exists()
    out = admin.post(f"/rounds/{r1['id']}/close").json
    res = out["result"]
    assert len(out["accepted"]) == 3 and res["promoted"] is True, out
    assert res["candidate_accuracy"] > res["champion_accuracy"] and res["rollout"]["state"] == "running"
    for a in agents:  # the next check-in installs the promoted parameter release through TUF
        a.step()
        assert a.installer.active_version() == 2 and a.last_delivery["delta"] is False
    for a in agents:
        a.flush()
    assert admin.post("/rollouts/tick").status_code == 200
    assert admin.get(f"/rollouts/{res['rollout']['id']}").json["state"] == "completed"
    r2 = admin.post("/rounds", {"model": "digits", "base_version": 2, "params": ["W", "b"], "min_clients": 3,
                                "evaluation": {"path": str(eval_npz)}}).json
    for a in agents:
        a.step()
        assert a.participant.last == {**a.participant.last, "status": "uploaded", "round_id": r2["id"]}
    res2 = admin.post(f"/rounds/{r2['id']}/close").json["result"]
    assert res2["champion_accuracy"] == pytest.approx(res["candidate_accuracy"])  # v2 is the new champion
    assert res2["accepted"] == 3


def test_agent_skips_a_round_when_its_conditions_change_and_reports_the_new_facts(make_agent, admin, fleet):
    agents = [make_agent(i) for i in range(3)]
    _install_v1(admin, agents)
    rid = admin.post("/rounds", {"model": "digits", "base_version": 1, "params": ["W", "b"],
                                 "min_clients": 3}).json["id"]
    _set_conditions(agents[2], charging=False)  # unplugged after being selected
    for a in agents:
        a.step()
    assert [a.participant.last["status"] for a in agents] == ["uploaded", "uploaded", "skipped"]
    assert "charging" in agents[2].participant.last["reason"]
    st = admin.get(f"/rounds/{rid}").json
    assert sorted(u["device_id"] for u in st["accepted"]) == sorted(a.state.device_id for a in agents[:2])
    from fleet_server._models import Device

    with fleet.db.read() as s:  # the heartbeat carried the new facts, so the next cohort leaves it out
        assert s.get(Device, agents[2].state.device_id).state == {**ALL_TRUE, "charging": False}
    _set_conditions(agents[2])
    agents[2].step()
    assert agents[2].participant.last["status"] == "uploaded"  # plugged in again before the deadline


def test_agent_does_not_start_training_too_close_to_the_deadline(make_agent, admin):
    agents = [make_agent(i, fl_min_time_s=30.0) for i in range(2)]
    _install_v1(admin, agents)
    rid = admin.post("/rounds", {"model": "digits", "base_version": 1, "params": ["W", "b"], "min_clients": 2,
                                 "deadline_s": 10}).json["id"]
    for a in agents:
        a.step()
        assert a.participant.last == {"status": "skipped", "round_id": rid, "reason": "too close to the deadline"}
    assert admin.get(f"/rounds/{rid}").json["accepted"] == []


def test_the_deadline_is_judged_on_the_servers_clock_once_the_agent_has_corrected_its_own(make_agent, admin):
    agents = [make_agent(i, fl_min_time_s=5.0) for i in range(2)]
    _install_v1(admin, agents)
    for a in agents:  # the device clock runs 10 minutes fast, and the agent has learned the offset
        a.api.clock = lambda: time.time() + 600
        a.api.clock_offset_s = -600.0
    rid = admin.post("/rounds", {"model": "digits", "base_version": 1, "params": ["W", "b"], "min_clients": 2,
                                 "deadline_s": 120}).json["id"]
    for a in agents:  # by the raw device clock the deadline passed 8 minutes ago; by the server's, 2 minutes remain
        a.step()
        assert a.participant.last["status"] == "uploaded", a.participant.last
    assert len(admin.get(f"/rounds/{rid}").json["accepted"]) == 2


def test_a_rejected_update_is_not_retrained_and_the_memory_survives_a_restart(make_agent, admin):
    agents = [make_agent(i) for i in range(2)]
    _install_v1(admin, agents)
    rid = admin.post("/rounds", {"model": "digits", "base_version": 1, "params": ["W", "b"], "min_clients": 2,
                                 "codecs": ["int8"],
                                 "policy": {"max_norm": 1e-6, "on_norm_exceeded": "reject"}}).json["id"]
    a = agents[0]
    a.step()
    assert a.participant.last["status"] == "rejected" and a.participant.last["reason"] == "norm_exceeded"
    assert not (a.dir / "fl-feedback.state").exists()  # the residual is kept only once the server counted it
    restarted = make_agent(0, enroll=False)  # same state directory, a new process's worth of objects
    assert restarted.state.device_id == a.state.device_id
    seen = restarted.participant.step(restarted.api, restarted.state.device_id, restarted._key(),
                                      restarted.installer, restarted.conditions)
    assert seen == {"status": "answered", "round_id": rid}
    assert len(admin.get(f"/rounds/{rid}").json["rejected"]) == 1  # not retrained, not re-sent


def test_bad_local_data_is_one_clear_error_and_the_agent_keeps_serving(make_agent, admin, tmp_path):
    a = make_agent(0, n=1)
    np.savez(a.config.fl_data, x=np.zeros((3, 64), np.float32), y=np.array([0.5, 1.5, 2.5]))
    _install_v1(admin, [a])
    admin.post("/rounds", {"model": "digits", "base_version": 1, "params": ["W", "b"], "min_clients": 1})
    a.step()
    assert a.participant.last["status"] == "error" and "DataError" in a.participant.last["reason"]
    assert a.state.consecutive_failures == 0 and a.installer.active_version() == 1


def test_device_run_takes_part_in_a_round_with_fl_data_and_refuses_bad_data_with_exit_9(
        live, admin, fleet, federated_key, trust_file, digits, edgepack_cli, tmp_path):
    x, y, _, _ = digits
    np.savez(tmp_path / "local.npz", x=x[:120], y=y[:120])
    np.save(tmp_path / "not-npz.npz", x[:3])
    (tmp_path / "cond.json").write_text(json.dumps(ALL_TRUE))
    root = fleet.config.instance_dir / "tuf" / "repo" / "metadata" / "1.root.json"
    upd_trust = tmp_path / "update-trust.json"
    Trust.of([federated_key.public]).save(upd_trust)
    state = tmp_path / "cli-dev"
    first = ["device", "run", "--server", live, "--state", state, "--trust", trust_file, "--update-trust", upd_trust,
             "--tuf-root", root, "--conditions", tmp_path / "cond.json", "--max-steps", "1", "--json"]
    code, _, err = edgepack_cli(*first, "--fl-data", tmp_path / "not-npz.npz",
                                "--enroll-token", admin.post("/enrollment-tokens", {}).json["token"])
    assert code == 9 and err.count("\n") == 1 and "local data" in err, err
    code, out, err = edgepack_cli(*first, "--fl-data", tmp_path / "local.npz",
                                  "--enroll-token", admin.post("/enrollment-tokens", {}).json["token"])
    assert code == 0, err
    dev = json.loads(out)["device_id"]
    assert admin.post("/rollouts", {"release": {"name": "digits", "version": 1}, "group": "default",
                                    "waves": [100], "gates": {"min_reports": 1}}).status_code == 201
    code, out, err = edgepack_cli("device", "run", "--server", live, "--state", state, "--max-steps", "1",
                                  "--fl-data", tmp_path / "local.npz", "--json")
    assert code == 0 and json.loads(out)["active_version"] == 1, err
    rid = admin.post("/rounds", {"model": "digits", "base_version": 1, "params": ["W", "b"]}).json["id"]
    code, out, err = edgepack_cli("device", "run", "--server", live, "--state", state, "--max-steps", "1",
                                  "--fl-data", tmp_path / "local.npz", "--fl-epochs", "3", "--json")
    assert code == 0, err
    last = json.loads(out)["last_round"]
    assert last["status"] == "uploaded" and last["round_id"] == rid and last["num_samples"] == 120
    assert [u["device_id"] for u in admin.get(f"/rounds/{rid}").json["accepted"]] == [dev]
    code, out, _ = edgepack_cli("device", "status", "--state", state, "--json")
    assert code == 0 and json.loads(out)["last_round"] == {**last, "status": "uploaded"}


def test_agent_round_settings_come_typed_from_the_environment_and_bad_values_are_refused(monkeypatch):
    from edgepack import ConfigError
    from runtime.agent import AgentConfig

    monkeypatch.setenv("EDGEPACK_AGENT_FL_DATA", "/data/local.npz")
    monkeypatch.setenv("EDGEPACK_AGENT_FL_EPOCHS", "7")
    monkeypatch.setenv("EDGEPACK_AGENT_FL_MIN_TIME_S", "2.5")
    cfg = AgentConfig.from_env(conditions_file="/run/facts.json")
    assert (cfg.fl_data, cfg.fl_epochs, cfg.fl_min_time_s, cfg.conditions_file) == (
        "/data/local.npz", 7, 2.5, "/run/facts.json")
    assert AgentConfig.from_env(fl_epochs=3).fl_epochs == 3  # explicit arguments win
    monkeypatch.setenv("EDGEPACK_AGENT_FL_EPOCHS", "many")
    with pytest.raises(ConfigError, match="FL_EPOCHS"):
        AgentConfig.from_env()
    monkeypatch.delenv("EDGEPACK_AGENT_FL_EPOCHS")
    with pytest.raises(ConfigError, match="fl_min_time_s"):
        AgentConfig(fl_min_time_s=0)


@pytest.mark.parametrize("text, facts", [
    ('{"charging": true, "idle": true, "wifi": false}', {"charging": True, "idle": True, "wifi": False}),
    ('{"charging": "yes", "idle": true}', {"idle": True}),   # not a boolean: not a fact
    ("not json", {}),
    ("[true]", {}),
    (None, {}),                                              # no file: nothing is known, so not eligible
])
def test_conditions_file_is_read_on_the_safe_side(tmp_path, text, facts):
    from runtime.agent import read_conditions

    p = tmp_path / "facts.json"
    if text is not None:
        p.write_text(text)
    assert read_conditions(p) == facts
