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

import pytest
from support import faults

pytestmark = pytest.mark.slow


# training_kill: here always mid-training; benchmarks/faults.py also kills just after the upload
@pytest.mark.parametrize(("scenario", "kw"), [("upload_kill", {}), ("round_close_kill", {}),
                                              ("agent_download_kill", {}), ("training_kill", {"after_upload": 0.0})])
def test_sigkill_loses_nothing_accepted_and_leaves_consistent_state(scenario, kw, tmp_path, trust_file, release_key):
    outcome = getattr(faults, scenario)(tmp_path, trust_file, release_key, random.Random(scenario), **kw)
    assert outcome.injected == 1, "the kill did not land while the work was in progress"
    assert outcome.problems == []
    assert outcome.verified == outcome.devices
