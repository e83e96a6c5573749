"""Releases assigned to a group are published as targets of that group's delegated TUF role."""

from __future__ import annotations

import hashlib
import json

import pytest

from edgepack import generate_key, save_key_pair


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path / 'fleet.db'}"


@pytest.fixture
def fleet_config(fleet_config, tmp_path):
    """The instance gets a TUF repository (root signed by 2 of 2 offline keys) before the app starts."""
    from fleet_server._publish import create_tuf

    roots = []
    for i in range(2):
        k = generate_key()
        roots.append(save_key_pair(k, tmp_path / "offline", f"root{i}")[0])
    create_tuf(fleet_config.instance_dir, roots, 2, ["lab", "other"])
    return fleet_config


def test_rollout_publishes_the_release_into_the_groups_role_and_serves_it(fleet, admin, enroll, make_bundle, client):
    assert fleet.publisher.kind == "tuf"
    lab, other = enroll("lab"), enroll("other")
    bundle = make_bundle(1, size=30_000)
    assert admin.upload(bundle).status_code == 201
    assert admin.post("/rollouts", {"release": {"name": "digits", "version": 1}, "group": "lab",
                                    "waves": [100]}).status_code == 201
    a = lab.assignment().json["release"]
    assert a["target"] == "groups/lab/digits-1.edgepack"
    targets = fleet.publisher.repo.targets_for("lab")
    assert targets[a["target"]].hashes["sha256"] == a["sha256"] == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert fleet.publisher.repo.targets_for("other") == {}

    # top-level metadata is public; the group's role only for its own devices
    assert client.get("/tuf/metadata/1.root.json").status_code == 200
    ts = client.get("/tuf/metadata/timestamp.json")
    assert ts.status_code == 200 and json.loads(ts.data)["signed"]["_type"] == "timestamp"
    assert client.get("/tuf/metadata/group-lab.json").status_code == 401
    assert other.request("GET", "/tuf/metadata/group-lab.json").status_code == 403
    role = lab.request("GET", "/tuf/metadata/group-lab.json")
    assert role.status_code == 200 and a["target"] in json.loads(role.data)["signed"]["targets"]

    # consistent snapshots: the file is served under its hash-prefixed name, resumable
    url = f"/tuf/targets/groups/lab/{a['sha256']}.digits-1.edgepack"
    full = lab.request("GET", url)
    assert full.status_code == 200 and full.data == bundle.read_bytes()
    assert full.headers["ETag"] == f'"{a["sha256"]}"'
    part = lab.request("GET", url, headers={"Range": "bytes=1000-"})
    assert part.status_code == 206 and part.data == bundle.read_bytes()[1000:]
    assert other.request("GET", url).status_code == 403


def test_background_tick_resigns_online_metadata_before_it_expires(fleet):
    import datetime as dt

    repo = fleet.publisher.repo
    before = repo.status()["timestamp"]["version"]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=20)  # past half the 1-day lifetime
    assert fleet.background_tick(now=dt.datetime.now(dt.UTC)) == []  # nothing due yet
    assert "timestamp" in fleet.background_tick(now=later)
    assert repo.status()["timestamp"]["version"] == before + 1


def _signed_group_role(fleet, group: str):
    """The group's role as devices read it, checked against the delegation in the signed targets role."""
    from tuf.api.metadata import Metadata

    top = Metadata.from_bytes(fleet.publisher.metadata("targets.json")).signed
    md = Metadata.from_bytes(fleet.publisher.metadata(f"group-{group}.json"))
    top.verify_delegate(f"group-{group}", md.signed_bytes, md.signatures)
    return md.signed


@pytest.mark.parametrize("how", ["gate_trip", "manual_rollback"])
def test_rollback_withdraws_the_bad_release_from_the_groups_signed_role(fleet, admin, enroll, make_bundle, how):
    dev = enroll("lab")
    for v in (1, 2):
        assert admin.upload(make_bundle(v)).status_code == 201
    assert admin.post("/rollouts", {"release": {"name": "digits", "version": 1}, "group": "lab",
                                    "waves": [100]}).status_code == 201
    assert dev.report("install", 1).status_code == 202
    before = _signed_group_role(fleet, "lab")
    r = admin.post("/rollouts", {"release": {"name": "digits", "version": 2}, "group": "lab", "waves": [100],
                                 "gates": {"min_reports": 1, "max_failure_rate": 0.0}})
    assert r.status_code == 201, r.json
    assert "groups/lab/digits-2.edgepack" in _signed_group_role(fleet, "lab").targets
    if how == "gate_trip":
        assert dev.report("install", 2, ok=False, reason="health check failed").status_code == 202
        assert admin.get(f"/rollouts/{r.json['id']}").json["state"] == "rolled_back"
    else:
        assert dev.report("install", 2).status_code == 202  # completes
        assert admin.post(f"/rollouts/{r.json['id']}/rollback", {"reason": "bad"}).json["state"] == "rolled_back"
    assert dev.assignment().json["release"]["version"] == 1
    role = _signed_group_role(fleet, "lab")
    assert "groups/lab/digits-2.edgepack" not in role.targets, "the bad release is withdrawn"
    assert "groups/lab/digits-1.edgepack" in role.targets, "the previous release stays signed"
    assert role.version > before.version
    # the timestamp and snapshot name the new role version, so devices see the withdrawal
    from tuf.api.metadata import Metadata

    snap = Metadata.from_bytes(fleet.publisher.metadata("snapshot.json")).signed
    assert snap.meta["group-lab.json"].version == role.version


def test_params_withdrawal_is_per_group_and_cleared_by_a_new_rollout(fleet):
    repo = fleet.publisher.repo
    repo.publish_params("digits", 2, b"full update bytes" * 10, delta=(1, b"delta"))
    full = "params/digits/digits-2.epu"
    assert fleet.publisher.withdraw("lab", full) is True
    assert fleet.publisher.withdraw("lab", full) is False, "a second withdrawal changes nothing"
    for info in repo.params_targets().values():  # the full update and its delta
        assert info.custom["withdrawn_groups"] == ["lab"]
    fleet.publisher.publish_params("digits", 2, "unused", "unused", None, group="other")
    assert repo.params_targets()[full].custom["withdrawn_groups"] == ["lab"]
    fleet.publisher.publish_params("digits", 2, "unused", "unused", None, group="lab")
    assert all("withdrawn_groups" not in i.custom for i in repo.params_targets().values())
