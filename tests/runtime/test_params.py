"""Signed parameter updates: whole and delta encodings, ONNX and TFLite, hash and base checks."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import edgepack
import runtime
from edgepack import _params


@pytest.fixture
def installed(tmp_path, trust, make_bundle) -> runtime.InstallStore:
    store = runtime.InstallStore(tmp_path / "state", trust)
    store.install(make_bundle(tmp_path / "digits-1.edgepack", 1)).raise_for_status()
    return store


def _tflite_name(tflite_bytes: bytes, value: np.ndarray) -> str:
    ws = _params.read_weights("tflite", tflite_bytes)
    return next(n for n, v in ws.items() if v.shape == value.shape and np.array_equal(v, value))


def _new_head(mlp_weights, scale=0.05, seed=0):
    rng = np.random.default_rng(seed)
    return {k: (mlp_weights[k] + scale * rng.standard_normal(mlp_weights[k].shape)).astype(np.float32)
            for k in ("fc2.weight", "fc2.bias")}


def _update(store, onnx_bytes, tflite_bytes, mlp_weights, key, *, encoding="delta-xor", compression="zlib",
            base_version=1, version=2, new=None):
    new = new or _new_head(mlp_weights)
    tfl = {_tflite_name(tflite_bytes, mlp_weights[k]): new[k] for k in new}
    return _params.encode_param_update(
        model="digits", version=version, base_version=base_version,
        base_artifacts={"artifacts/digits.fp32.onnx": ("onnx", onnx_bytes),
                        "artifacts/digits.fp32.tflite": ("tflite", tflite_bytes)},
        new_weights={"artifacts/digits.fp32.onnx": new, "artifacts/digits.fp32.tflite": tfl},
        keys=[key], encoding=encoding, compression=compression), new


def test_every_weight_locator_is_tested():
    from edgepack import _weights

    assert sorted(_weights.LOCATORS) == ["onnx", "tflite"]


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_weight_locator_finds_every_trained_tensor(fmt, onnx_bytes, tflite_bytes, mlp_weights):
    data = onnx_bytes if fmt == "onnx" else tflite_bytes
    ws = _params.read_weights(fmt, data)
    for v in mlp_weights.values():
        assert any(w.shape == v.shape and np.array_equal(w, v) for w in ws.values())


def test_onnx_float_data_initializers_are_patchable(helpers, mlp_weights):
    data = helpers.make_onnx(mlp_weights, raw=False)
    np.testing.assert_array_equal(_params.read_weights("onnx", data)["fc2.bias"], mlp_weights["fc2.bias"])


@pytest.mark.parametrize("encoding", _params.ENCODINGS)
@pytest.mark.parametrize("compression", _params.COMPRESSIONS)
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_update_rebuilds_the_signed_artifact_and_changes_predictions(
        installed, onnx_bytes, tflite_bytes, mlp_weights, release_key, digits, helpers, encoding, compression, fmt):
    (blob, rebuilt), new = _update(installed, onnx_bytes, tflite_bytes, mlp_weights, release_key,
                                   encoding=encoding, compression=compression)
    res = installed.apply_param_update(blob)
    assert res.ok, res.reason
    m = installed.load_active(runtime.LoadConfig(backends=(fmt,)))
    assert m.version == 2 and m.artifact_bytes == rebuilt[m.artifact]
    x = (digits[0][:16] / 16).astype(np.float32)
    want = helpers.forward({**mlp_weights, **new}, x)
    np.testing.assert_allclose(m.predict(x), want, atol=1e-4)
    assert not np.allclose(m.predict(x), helpers.forward(mlp_weights, x), atol=1e-3)


def test_small_change_delta_is_much_smaller_than_whole(onnx_bytes, tflite_bytes, mlp_weights, release_key):
    w = mlp_weights["fc2.weight"].copy()
    w[0, :4] += 1.0
    new = {"fc2.weight": w}
    sizes = {}
    for enc in ("whole", "delta-xor"):
        blob, _ = _params.encode_param_update(model="digits", version=2, base_version=1,
                                              base_artifacts={"artifacts/a.onnx": ("onnx", onnx_bytes)},
                                              new_weights={"artifacts/a.onnx": new}, keys=[release_key],
                                              encoding=enc)
        sizes[enc] = len(blob)
    assert sizes["delta-xor"] < 0.8 * sizes["whole"]


def test_delta_against_the_wrong_base_version_is_rejected(installed, onnx_bytes, tflite_bytes, mlp_weights,
                                                          release_key):
    (blob, _), _ = _update(installed, onnx_bytes, tflite_bytes, mlp_weights, release_key, base_version=7, version=8)
    res = installed.apply_param_update(blob)
    assert not res.ok and res.reason["code"] == "wrong_base_version" and installed.active().version == 1


def test_second_delta_applies_on_top_of_the_first(installed, onnx_bytes, tflite_bytes, mlp_weights, release_key):
    (b1, r1), n1 = _update(installed, onnx_bytes, tflite_bytes, mlp_weights, release_key)
    installed.apply_param_update(b1).raise_for_status()
    n2 = _new_head(n1, seed=1)
    tfl_names = {k: _tflite_name(tflite_bytes, mlp_weights[k]) for k in n2}
    b2, r2 = _params.encode_param_update(
        model="digits", version=3, base_version=2,
        base_artifacts={p: (p.rsplit(".", 1)[-1], r1[p]) for p in r1},
        new_weights={"artifacts/digits.fp32.onnx": n2,
                     "artifacts/digits.fp32.tflite": {tfl_names[k]: v for k, v in n2.items()}}, keys=[release_key])
    assert installed.apply_param_update(b2).ok
    assert installed.load_active().artifact_bytes == r2["artifacts/digits.fp32.onnx"]
    stale = installed.apply_param_update(b1)   # replaying the first update: wrong base now
    assert not stale.ok and stale.reason["code"] == "wrong_base_version"


def _resign(blob: bytes, key, mutate) -> bytes:
    n = len(_params.MAGIC)
    (hlen,) = struct.unpack_from(">I", blob, n)
    env = json.loads(blob[n + 4:n + 4 + hlen])
    mutate(env["signed"])
    sig = edgepack._signing.sign_bytes(key, edgepack.canonical_bytes(env["signed"])).to_dict()
    header = edgepack.canonical_bytes({"signed": env["signed"], "signatures": [sig]})
    return _params.MAGIC + struct.pack(">I", len(header)) + header + blob[n + 4 + hlen:]


def test_rebuilt_hash_mismatch_is_rejected_and_the_old_model_stays(installed, onnx_bytes, tflite_bytes,
                                                                   mlp_weights, release_key):
    (blob, _), _ = _update(installed, onnx_bytes, tflite_bytes, mlp_weights, release_key)
    bad = _resign(blob, release_key,
                  lambda p: p["artifacts"]["artifacts/digits.fp32.onnx"].update(result_sha256="0" * 64))
    res = installed.apply_param_update(bad)
    assert not res.ok and res.reason["code"] == "param_hash_mismatch"
    assert installed.active().version == 1 and installed.load_active().version == 1


@pytest.mark.parametrize("attack, error", [
    ("flip_body", "ArtifactHashError"),
    ("untrusted_key", "UntrustedKeyError"),
    ("edit_header", "BadSignatureError"),
    ("bad_magic", "ParamFormatError"),
])
def test_tampered_or_untrusted_updates_are_refused(installed, onnx_bytes, tflite_bytes, mlp_weights,
                                                   release_key, attack, error):
    (blob, _), _ = _update(installed, onnx_bytes, tflite_bytes, mlp_weights, release_key)
    if attack == "flip_body":
        blob = blob[:-1] + bytes([blob[-1] ^ 1])
    elif attack == "untrusted_key":
        blob = _resign(blob, edgepack.generate_key(), lambda p: None)
    elif attack == "edit_header":
        blob = blob.replace(b'"version":2', b'"version":9')
    else:
        blob = b"XXXXX" + blob[5:]
    res = installed.apply_param_update(blob)
    assert not res.ok and res.reason["code"] == "verification_failed" and res.reason["error"] == error
    assert installed.active().version == 1


def test_update_that_breaks_the_model_fails_health_check_and_rolls_back(installed, onnx_bytes, tflite_bytes,
                                                                       mlp_weights, release_key):
    nan_head = {k: np.full_like(mlp_weights[k], np.nan) for k in ("fc2.weight", "fc2.bias")}
    (blob, _), _ = _update(installed, onnx_bytes, tflite_bytes, mlp_weights, release_key, new=nan_head)
    res = installed.apply_param_update(blob)
    assert not res.ok and res.reason["code"] == "health_check_failed" and installed.active().version == 1
