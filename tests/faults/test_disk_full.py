"""Fault: the disk fills up during an install.

Two ways to run out of room: a small tmpfs mounted over the state directory (needs root,
skipped with the reason otherwise), and ``RLIMIT_FSIZE`` in a subprocess (works anywhere;
writes past the limit fail with EFBIG). Either way the install is refused with reason
``no_space`` (``raise_for_status`` -> InstallError, an UpdateError), the previous model
keeps serving and verifying, no partial file is left, and once there is room the same
install succeeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.models import TINY_IO, golden_npz

import runtime
from edgepack import BundleBuilder, UpdateError

BIG = 1_500_000  # the v2 bundle carries an incompressible report of this size


def _bundle(path: Path, version: int, onnx_bytes: bytes, keys, report: int = 0) -> Path:
    b = BundleBuilder("tiny", version, io=TINY_IO, lineage={"seed": 0, "parent_version": None})
    b.add_artifact("tiny.fp32.onnx", onnx_bytes, format="onnx", precision="fp32")
    b.set_golden(golden_npz(onnx_bytes))
    if report:
        b.add_report("calibration.bin", os.urandom(report))
    return b.write(path, keys)


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _serving(state: Path, trust, version: int) -> None:
    store = runtime.InstallStore(state, trust)
    model = store.load_active(allow_fallback=False)  # verifies signature, hashes and the journal's sha
    assert model.version == version and runtime.health_check(model).ok


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({out.stderr.strip()}); the RLIMIT_FSIZE variant covers it")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_refuses_the_install_keeps_the_old_model_and_leaves_no_partial_file(
        small_fs, tmp_path, onnx_bytes, release_keys, trust):
    v1 = _bundle(tmp_path / "tiny-1.edgepack", 1, onnx_bytes, release_keys[:1])
    v2 = _bundle(tmp_path / "tiny-2.edgepack", 2, onnx_bytes, release_keys[:1], report=BIG)
    state = small_fs / "state"
    store = runtime.InstallStore(state, trust)
    store.install(v1).raise_for_status()
    filler = small_fs / "filler"
    free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
    filler.write_bytes(b"\0" * (free - 600_000))  # room for a journal, not for v2
    before = _files(state)

    res = store.install(v2)
    assert not res.ok and res.reason["code"] == "no_space", res.reason
    assert "no space left" in res.reason["message"] and res.reason["details"]["free_bytes"] < BIG
    with pytest.raises(UpdateError, match="no space left"):
        res.raise_for_status()
    assert res.active_version == 1
    _serving(state, trust, 1)
    after = _files(state)
    assert set(after) == set(before), "a partial file was left behind"  # journal.json may have grown
    assert store.journal()["last_result"]["reason"]["code"] == "no_space"

    filler.unlink()
    store.install(v2).raise_for_status()
    _serving(state, trust, 2)


CHILD = r"""
import json, resource, signal, sys
import edgepack, runtime
state, v2, trust_path, limit = sys.argv[1:5]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
res = runtime.InstallStore(state, edgepack.load_trust(trust_path)).install(v2)
print(json.dumps(res.to_dict()))
"""


def test_file_size_limit_refuses_the_install_the_same_way(tmp_path, onnx_bytes, release_keys, trust):
    v1 = _bundle(tmp_path / "tiny-1.edgepack", 1, onnx_bytes, release_keys[:1])
    v2 = _bundle(tmp_path / "tiny-2.edgepack", 2, onnx_bytes, release_keys[:1], report=BIG)
    trust_path = tmp_path / "trust.json"
    trust.save(trust_path)
    state = tmp_path / "state"
    runtime.InstallStore(state, trust).install(v1).raise_for_status()
    before = _files(state)

    out = subprocess.run([sys.executable, "-c", CHILD, str(state), str(v2), str(trust_path), "200000"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert not res["ok"] and res["reason"]["code"] == "no_space" and res["active_version"] == 1, res
    _serving(state, trust, 1)
    assert set(_files(state)) == set(before)

    runtime.InstallStore(state, trust).install(v2).raise_for_status()  # no limit now
    _serving(state, trust, 2)
