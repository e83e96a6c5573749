"""SIGKILL the installing process at random points, >= 100 times: the device must
always load a verified model that is exactly the old one or exactly the new one.

A helper process imports everything once and forks a worker per round (a fresh
interpreter per kill would cost ~0.5 s each); the worker loops install(v2) /
rollback() forever, so kills land in copy, verify, health check, commit and
rollback alike. After each kill the test loads the active model *without* the
fallback, so a half-written activation could not hide behind a rollback.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import runtime

KILLS = 120

FORKER = r"""
import os, signal, sys
import numpy, onnxruntime, edgepack, runtime
state, v2, trust_path = sys.argv[1:4]
trust = edgepack.load_trust(trust_path)
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "fork":
        pid = os.fork()
        if pid == 0:
            store = runtime.InstallStore(state, trust)
            while True:
                store.install(v2)
                store.rollback("crash-test loop")
        print(pid, flush=True)
    elif cmd[0] == "wait":
        _, status = os.waitpid(int(cmd[1]), 0)
        print(os.WIFSIGNALED(status) and os.WTERMSIG(status), flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_install_never_leaves_a_mixed_or_unverified_model(tmp_path, trust, make_bundle, digits):
    v1 = make_bundle(tmp_path / "digits-1.edgepack", 1)
    # v2 has the same artifacts, so "never a mix" is checked on the whole verified manifest
    v2 = make_bundle(tmp_path / "digits-2.edgepack", 2)
    trust_path = tmp_path / "trust.json"
    trust.save(trust_path)
    state = tmp_path / "state"
    store = runtime.InstallStore(state, trust)
    store.install(v1).raise_for_status()
    expected = {1: runtime.load(v1, trust).manifest.to_dict(), 2: runtime.load(v2, trust).manifest.to_dict()}

    forker = subprocess.Popen([sys.executable, "-c", FORKER, str(state), str(v2), str(trust_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path.cwd())
    rng = random.Random(1234)
    seen_versions: set[int] = set()
    try:
        assert forker.stdout.readline().strip() == "ready"
        x = digits[0][:4]
        for _ in range(KILLS):
            forker.stdin.write("fork\n")
            forker.stdin.flush()
            pid = int(forker.stdout.readline())
            time.sleep(rng.uniform(0.0, 0.25))
            os.kill(pid, signal.SIGKILL)
            forker.stdin.write(f"wait {pid}\n")
            forker.stdin.flush()
            assert forker.stdout.readline().strip() == str(int(signal.SIGKILL))

            check = runtime.InstallStore(state, trust)
            model = check.load_active(runtime.LoadConfig(warmup_runs=0), allow_fallback=False)
            assert model.version in (1, 2)
            assert model.manifest.to_dict() == expected[model.version]      # never a mix
            assert check.active().version == model.version
            assert runtime.health_check(model).ok
            assert model.predict(x, normalize=True).shape == (4, 10)
            seen_versions.add(model.version)
    finally:
        forker.kill()
        forker.wait()
    assert seen_versions == {1, 2}, "kills should land both before and after activation"
