"""SIGKILL faults, one injection each (benchmarks/faults.py repeats them at random points).

The scenarios live in tests/support/faults.py; each returns the problems it found after
the restart ("loss: ..." or "inconsistent: ..."), so every test asserts there are none.
Covered elsewhere, not repeated here:

* server SIGKILL during a rollout: tests/fleet/test_crash_recovery.py
* server SIGKILL while round updates arrive: tests/rounds/test_round_crash.py
* agent SIGKILL during install (120 kills): tests/runtime/test_crash.py
* a dropped download resumed after an agent restart: tests/agent/test_resume_e2e.py
"""

from __future__ import annotations

import random
import sqlite3

import pytest
from support import faults
from support.server import Server, http_json

pytestmark = pytest.mark.slow


# training_kill: here always mid-training; benchmarks/faults.py also kills just after the upload
@pytest.mark.parametrize(("scenario", "kw"), [("upload_kill", {}), ("round_close_kill", {}),
                                              ("agent_download_kill", {}), ("training_kill", {"after_upload": 0.0})])
def test_sigkill_loses_nothing_accepted_and_leaves_consistent_state(scenario, kw, tmp_path, trust_file, release_key):
    outcome = getattr(faults, scenario)(tmp_path, trust_file, release_key, random.Random(scenario), **kw)
    assert outcome.injected == 1, "the kill did not land while the work was in progress"
    assert outcome.problems == []
    assert outcome.verified == outcome.devices


def test_a_stored_bundle_whose_release_row_never_committed_is_swept_at_start(instance, tmp_path, release_key):
    # The narrow window of upload_kill (after put_file, before the commit), set up directly.
    inst, token = instance
    server = Server(inst)
    server.start()
    try:
        st, rel = http_json("POST", f"{server.url}/api/v1/admin/releases",
                            faults.random_bundle(tmp_path, release_key, 1, 4096).read_bytes(),
                            {"Authorization": f"Bearer {token}"})
        assert st == 201
        server.stop()
        kept = inst / "artifacts" / rel_key(inst)
        orphan = kept.with_name("digits-2-0123456789abcdef.edgepack")
        orphan.write_bytes(faults.random_bundle(tmp_path, release_key, 2, 4096).read_bytes())
        server.start()
        assert not orphan.exists() and kept.is_file()
        st, doc = http_json("GET", f"{server.url}/api/v1/admin/releases", headers={"Authorization": f"Bearer {token}"})
        assert [(r["version"], r["sha256"]) for r in doc["releases"]] == [(1, rel["sha256"])]
    finally:
        server.stop()


def rel_key(inst) -> str:
    con = sqlite3.connect(inst / "fleet.db")
    try:
        (key,), = con.execute("SELECT storage_key FROM releases").fetchall()
    finally:
        con.close()
    return key
