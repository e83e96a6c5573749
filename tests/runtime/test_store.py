"""The install store: A/B slots, journal, health check, rollback, supersede."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

import edgepack
import runtime
from runtime import _store


@pytest.fixture
def store(tmp_path, trust) -> runtime.InstallStore:
    return runtime.InstallStore(tmp_path / "state", trust)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, make_bundle) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bundles")
    return {
        "v1": make_bundle(d / "digits-1.edgepack", 1),
        "v2": make_bundle(d / "digits-2.edgepack", 2),
        "v3": make_bundle(d / "digits-3.edgepack", 3),
        "v2_bad_golden": make_bundle(d / "digits-2-bad.edgepack", 2, corrupt_golden=True),
        "other_model": make_bundle(d / "other-5.edgepack", 5, name="other"),
    }


def test_first_install_activates_slot_a_and_loads(store, bundles, digits):
    res = store.install(bundles["v1"])
    assert res.ok and res.slot == "a" and res.active_version == 1
    m = store.load_active()
    assert m.version == 1 and m.predict(digits[0][:2], normalize=True).shape == (2, 10)


def test_second_install_uses_the_other_slot_and_keeps_the_previous(store, bundles):
    store.install(bundles["v1"]).raise_for_status()
    res = store.install(bundles["v2"])
    assert res.ok and res.slot == "b"
    assert store.active().version == 2 and store.previous().version == 1
    assert (store.root / "slots" / "a" / "bundle.edgepack").exists()


def test_failed_health_check_rolls_back_with_a_machine_readable_reason(store, bundles):
    store.install(bundles["v1"]).raise_for_status()
    res = store.install(bundles["v2_bad_golden"])
    assert not res.ok and res.rolled_back and res.reason["code"] == "health_check_failed"
    assert res.reason["details"]["outputs"][0]["output"] == "logits"
    assert store.active().version == 1 and store.load_active().version == 1
    journal = json.loads((store.root / "journal.json").read_text())
    assert journal["last_result"]["reason"]["code"] == "health_check_failed"
    with pytest.raises(runtime.HealthCheckError):
        res.raise_for_status()


def test_tampered_bundle_is_refused_and_the_active_version_stays(store, bundles, tamper, tmp_path):
    store.install(bundles["v1"]).raise_for_status()
    res = store.install(tamper(bundles["v2"], tmp_path / "t.edgepack", ".onnx"))
    assert not res.ok and res.reason == {**res.reason, "code": "verification_failed", "error": "ArtifactHashError"}
    assert store.active().version == 1


@pytest.mark.parametrize("name, code", [("v1", "not_newer"), ("other_model", "wrong_model")])
def test_older_or_foreign_bundles_are_refused(store, bundles, name, code):
    store.install(bundles["v1"]).raise_for_status()
    res = store.install(bundles[name])
    assert not res.ok and res.reason["code"] == code and store.active().version == 1


def test_a_newer_install_supersedes_a_stuck_one(store, bundles, monkeypatch):
    store.install(bundles["v1"]).raise_for_status()
    entered, release = threading.Event(), threading.Event()
    real = _store.health_check

    def stuck(model, **kw):
        if model.version == 2:
            entered.set()
            release.wait(30)
        return real(model, **kw)

    monkeypatch.setattr(_store, "health_check", stuck)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", store.install(bundles["v2"])))
    t.start()
    assert entered.wait(30)
    newer = store.install(bundles["v3"])   # must not wait for the stuck v2
    assert newer.ok and store.active().version == 3
    release.set()
    t.join(30)
    assert not out["r"].ok and out["r"].reason["code"] == "superseded"
    assert store.load_active().version == 3


def test_leftovers_of_a_killed_install_are_swept(store, bundles):
    dead = store.root / "incoming" / "999999999-deadbeef"
    dead.mkdir(parents=True)
    (dead / "bundle.edgepack").write_bytes(b"half")
    store.install(bundles["v1"]).raise_for_status()
    assert not dead.exists() and list((store.root / "incoming").iterdir()) == []


def test_manual_rollback_swaps_slots_and_records_the_reason(store, bundles):
    store.install(bundles["v1"]).raise_for_status()
    store.install(bundles["v2"]).raise_for_status()
    res = store.rollback("operator: accuracy regression")
    assert res.ok and store.active().version == 1 and store.previous().version == 2
    assert store.journal()["last_result"]["reason"]["message"] == "operator: accuracy regression"
    assert store.load_active().version == 1


def test_rollback_without_previous_is_refused(store, bundles):
    store.install(bundles["v1"]).raise_for_status()
    res = store.rollback("x")
    assert not res.ok and res.reason["code"] == "no_previous" and store.active().version == 1


def test_corrupted_active_slot_falls_back_to_previous_automatically(store, bundles):
    store.install(bundles["v1"]).raise_for_status()
    store.install(bundles["v2"]).raise_for_status()
    f = store.root / "slots" / "b" / "bundle.edgepack"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF   # damage on disk (bit rot, a bad flash block)
    f.write_bytes(bytes(data))
    with pytest.raises(edgepack.EdgepackError):
        store.load_active(allow_fallback=False)
    m = store.load_active()
    assert m.version == 1 and store.active().version == 1
    assert store.journal()["last_result"]["reason"]["code"] == "load_failed"


def test_nothing_installed_is_a_clear_error(store):
    with pytest.raises(runtime.InstallError, match="nothing is installed"):
        store.load_active()


def test_no_temp_files_are_left_after_operations(store, bundles):
    store.install(bundles["v1"]).raise_for_status()
    store.install(bundles["v2_bad_golden"])
    store.install(bundles["v2"]).raise_for_status()
    names = sorted(p.name for p in store.root.rglob("*") if ".tmp" in p.name or "trash" in p.name)
    assert names == []


def test_loaded_model_outputs_match_its_own_golden(store, bundles):
    store.install(bundles["v1"]).raise_for_status()
    report = runtime.health_check(store.load_active())
    assert report.ok and report.outputs[0]["rule"] == "allclose" and report.outputs[0]["max_abs"] < 1e-5
    assert np.isfinite(report.outputs[0]["max_abs"])


def test_a_bad_artifact_the_device_does_not_prefer_still_fails_the_install(
        store, bundles, helpers, onnx_bytes, tflite_bytes, digits, release_key, tmp_path):
    """Golden outputs match the ONNX artifact (the one served) but not the TFLite one: refused,
    because the device could later prefer TFLite."""
    store.install(bundles["v1"]).raise_for_status()
    x = (digits[0][:4] / 16).astype(np.float32)
    b = edgepack.BundleBuilder("digits", 2, io=helpers.digits_io(digits[0]))
    b.add_artifact("digits.fp32.onnx", onnx_bytes, format="onnx", precision="fp32")
    b.add_artifact("digits.fp32.tflite", tflite_bytes, format="tflite", precision="fp32")
    y = helpers.run_artifact("onnx", onnx_bytes, x)
    b.set_golden(helpers.golden_npz(x, {"digits.fp32.onnx": y, "digits.fp32.tflite": -y}))
    res = store.install(b.write(tmp_path / "d2.edgepack", [release_key]))
    assert not res.ok and res.reason["code"] == "health_check_failed"
    assert res.reason["details"]["artifact"] == "artifacts/digits.fp32.tflite"
    assert store.active().version == 1


@pytest.mark.parametrize("fails", ["before the journal's rename", "after the journal's rename"])
def test_an_io_error_at_the_commit_point_never_leaves_the_journal_naming_a_deleted_slot(
        store, bundles, monkeypatch, fails):
    """Fault injection at the commit point: the journal write fails before its rename (nothing
    changed: v1 stays active) or only its directory fsync fails after it (the rename happened:
    v2 is active and its slot must survive). Either way the active slot loads."""
    import edgepack._atomic as atomic

    store.install(bundles["v1"]).raise_for_status()
    real_replace, real_fsync = atomic.os.replace, atomic.fsync_dir

    def replace(src, dst):
        if fails.startswith("before") and Path(dst).name == "journal.json":
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    def fsync(path):
        if fails.startswith("after") and (Path(path) / "journal.json").exists() and Path(path) == store.root:
            raise OSError(5, "Input/output error")
        return real_fsync(path)

    monkeypatch.setattr(atomic.os, "replace", replace)
    monkeypatch.setattr(atomic, "fsync_dir", fsync)
    res = store.install(bundles["v2"])
    monkeypatch.undo()
    expected = 1 if fails.startswith("before") else 2
    assert res.ok == (expected == 2) and store.active().version == expected
    assert store.load_active().version == expected
