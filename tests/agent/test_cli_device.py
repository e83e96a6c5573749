"""``edgepack device run`` / ``status`` end to end against the real fleet server."""

from __future__ import annotations

import json


def test_device_run_enrolls_installs_and_status_shows_it(fleet_env, make_bundle, edgepack_cli, tmp_path,
                                                         trust) -> None:
    token = fleet_env.enrollment_token()
    trust_file, root_file = tmp_path / "trust.json", tmp_path / "1.root.json"
    trust.save(trust_file)
    root_file.write_bytes(fleet_env.root)
    state = tmp_path / "cli-dev"
    code, out, err = edgepack_cli("device", "run", "--server", fleet_env.url, "--state", state,
                                  "--trust", trust_file, "--tuf-root", root_file,
                                  "--enroll-token", token, "--max-steps", "1", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["active_version"] is None and doc["device_id"].startswith("d-") and doc["queued_reports"] == 0
    rel = fleet_env.upload(make_bundle(version=1))
    fleet_env.roll_out(rel["id"])
    # the second run needs no trust flags or token: they were pinned into the state directory
    code, out, err = edgepack_cli("device", "run", "--server", fleet_env.url, "--state", state,
                                  "--max-steps", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["active_version"] == 1 and json.loads(out)["device_id"] == doc["device_id"]
    code, out, _ = edgepack_cli("device", "status", "--state", state, "--json")
    assert code == 0 and json.loads(out)["active_version"] == 1


def test_device_run_first_time_without_trust_anchors_is_a_usage_error(edgepack_cli, tmp_path) -> None:
    code, _, err = edgepack_cli("device", "run", "--server", "http://127.0.0.1:9", "--state", tmp_path / "s")
    assert code == 2 and "--trust" in err and "--tuf-root" in err
