"""Loading verifies first; predict validates without copying; both backends agree."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgepack
import runtime
from runtime._iospec import check_array

FORMATS = ["onnx", "tflite"]


@pytest.fixture(params=FORMATS)
def model(request, bundle, trust) -> runtime.Model:
    return runtime.load(bundle, trust, runtime.LoadConfig(backends=(request.param,), num_threads=1))


def test_import_runtime_pulls_in_no_heavy_or_build_packages():
    code = ("import sys, runtime; heavy = ('torch', 'tensorflow', 'flask', 'onnx', 'converters', 'keras', "
            "'onnxruntime', 'ai_edge_litert', 'sklearn', 'fleet_server'); "
            "print([m for m in sys.modules if m.split('.')[0] in heavy])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(runtime.__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_matches_the_raw_artifact_and_the_original_on_a_batch(fmt, bundle, trust, digits,
                                                                      mlp_weights, onnx_bytes, tflite_bytes,
                                                                      helpers):
    m = runtime.load(bundle, trust, runtime.LoadConfig(backends=(fmt,)))
    assert m.format == fmt and m.version == 1
    x = (digits[0][:32] / 16).astype(np.float32)
    y = m.predict(x)
    raw = helpers.run_artifact(fmt, onnx_bytes if fmt == "onnx" else tflite_bytes, x)
    np.testing.assert_array_equal(y, raw)
    np.testing.assert_allclose(y, helpers.forward(mlp_weights, x), atol=1e-4)


def test_backend_preference_order_is_respected(bundle, trust):
    assert runtime.load(bundle, trust, runtime.LoadConfig(backends=("tflite", "onnx"))).format == "tflite"
    assert runtime.load(bundle, trust, runtime.LoadConfig(backends=("onnx", "tflite"))).format == "onnx"


def test_env_overrides_backend_preference(monkeypatch):
    monkeypatch.setenv("EDGEPACK_BACKENDS", "tflite,onnx")
    monkeypatch.setenv("EDGEPACK_NUM_THREADS", "2")
    cfg = runtime.LoadConfig.from_env(warmup_runs=0)
    assert cfg.backends == ("tflite", "onnx") and cfg.num_threads == 2 and cfg.warmup_runs == 0


def test_every_registered_backend_is_tested():
    assert sorted(runtime.BACKENDS) == sorted(FORMATS)


def test_unknown_backend_only_gives_a_clear_error(bundle, trust):
    with pytest.raises(runtime.BackendUnavailableError, match="no installed backend"):
        runtime.load(bundle, trust, runtime.LoadConfig(backends=("coreml",)))


def test_tampered_artifact_is_rejected_before_any_backend_loads(tmp_path, bundle, trust, monkeypatch, tamper):
    bad = tamper(bundle, tmp_path / "bad.edgepack", ".onnx")
    loaded = []
    monkeypatch.setattr(runtime.BACKENDS["onnx"], "load", lambda *a: loaded.append(a))
    with pytest.raises(edgepack.ArtifactHashError):
        runtime.load(bad, trust)
    assert loaded == []


def test_untrusted_signer_is_rejected(bundle):
    other = edgepack.Trust.of([edgepack.generate_key().public])
    with pytest.raises(edgepack.UntrustedKeyError):
        runtime.load(bundle, other)


def test_expired_bundle_is_rejected(bundle, trust):
    with pytest.raises(edgepack.ExpiredError):
        runtime.load(bundle, trust, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=400))


def test_correct_input_is_handed_over_without_a_copy(model, digits):
    x = (digits[0][:8] / 16).astype(np.float32)
    seen = []
    real = model.session.run
    model.session.run = lambda xs: (seen.extend(xs), real(xs))[1]
    model.predict(x)
    model.predict({"input": x})
    assert len(seen) == 2 and all(np.shares_memory(s, x) and s is x for s in seen)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 1, 8, 8), np.float64), r"input 'input' has dtype float64; expected float32"),
    (np.zeros((2, 64), np.float32), r"input 'input' has shape \[2, 64\]; expected rank 4"),
    (np.zeros((2, 8, 8, 1), np.float32), r"dim 1 must be 1"),
    ([[1.0]], r"must be a numpy array"),
    ({"image": np.zeros((1, 1, 8, 8), np.float32)}, r"unknown input\(s\) \['image'\]"),
])
def test_mismatched_input_names_the_input_and_the_expectation(model, bad, match):
    with pytest.raises(runtime.InputValidationError, match=match):
        model.predict(bad)
    assert sum(model.telemetry.errors.values()) == 1


def test_layout_mistake_gets_a_transpose_hint(model):
    with pytest.raises(runtime.InputValidationError) as ei:
        model.predict(np.zeros((2, 8, 8, 1), np.float32))
    assert "transpose(0, 3, 1, 2)" in ei.value.hint


def test_symbolic_dims_must_agree_across_inputs():
    spec = runtime.parse_io({"inputs": [{"name": "a", "shape": ["batch", 2], "dtype": "float32"},
                                         {"name": "b", "shape": ["batch", 3], "dtype": "float32"}],
                             "outputs": [{"name": "y", "shape": ["batch"], "dtype": "float32"}]})
    bound: dict[str, int] = {}
    check_array(spec.inputs[0], np.zeros((4, 2), np.float32), bound)
    with pytest.raises(runtime.InputValidationError, match="another input bound 'batch' to 4"):
        check_array(spec.inputs[1], np.zeros((5, 3), np.float32), bound)


def test_normalize_applies_manifest_mean_and_std(model, digits):
    raw = digits[0][:16]
    np.testing.assert_allclose(model.predict(raw, normalize=True), model.predict(raw / 16.0), atol=1e-5)


def test_out_of_range_inputs_are_counted_flagged_and_optionally_rejected(bundle, trust, digits):
    x = digits[0][:4].copy()
    x[1, 0, 0, 0] = 40.0  # a saturated sensor value, outside the training range [0, 16]
    m = runtime.load(bundle, trust)
    m.predict(x, normalize=True)
    assert m.telemetry.snapshot()["inputs"][0]["out_of_range_values"] == 1 and m.last_out_of_range == 1
    assert m.out_of_range_mask(x).tolist() == [False, True, False, False]
    strict = runtime.load(bundle, trust, runtime.LoadConfig(on_out_of_range="reject"))
    with pytest.raises(runtime.OutOfRangeError, match="outside the training range"):
        strict.predict(x, normalize=True)
    strict.predict(digits[0][:4], normalize=True)  # in-range data still passes
    m.predict(digits[0][:4], normalize=True)
    assert m.last_out_of_range == 0


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_batches_of_any_size_work(model, digits, batch):
    assert model.predict(digits[0][:batch], normalize=True).shape == (batch, 10)


def test_telemetry_snapshot_is_json_and_tracks_predictions_latency_and_drift(bundle, trust, digits):
    m = runtime.load(bundle, trust, runtime.LoadConfig(telemetry=runtime.TelemetryConfig(drift_sample_every=1)))
    x = digits[0]
    for i in range(0, 400, 20):
        m.predict(x[i:i + 20], normalize=True)
    snap = json.loads(json.dumps(m.telemetry.snapshot()))
    assert snap["active_version"] == 1 and snap["calls"] == 20 and snap["samples"] == 400
    assert sum(snap["predictions"]["counts"]) == 400
    assert sum(snap["latency"]["buckets"]) == 20
    in_dist = snap["inputs"][0]["psi"]
    assert in_dist < 0.1
    shifted = runtime.load(bundle, trust, runtime.LoadConfig(
        telemetry=runtime.TelemetryConfig(drift_sample_every=1)))
    for i in range(0, 400, 20):
        shifted.predict(np.clip(x[i:i + 20] * 0.3 + 9, 0, 16).astype(np.float32), normalize=True)
    assert shifted.telemetry.snapshot()["inputs"][0]["psi"] > 0.25 > in_dist


def test_telemetry_memory_is_bounded(bundle, trust, digits):
    m = runtime.load(bundle, trust)
    x = digits[0][:1]
    m.predict(x)
    size = len(json.dumps(m.telemetry.snapshot()))
    for _ in range(2000):
        m.predict(x)
    assert len(json.dumps(m.telemetry.snapshot())) <= size + 64  # only counter digits grow


def test_int8_tflite_with_integer_io_takes_and_returns_float32(tmp_path, digits, mlp_weights, helpers,
                                                               release_key, trust):
    from ai_edge_litert.interpreter import Interpreter

    x = (digits[0][:200] / 16).astype(np.float32)
    data = helpers.make_tflite(mlp_weights, calibration=x[:100])
    it = Interpreter(model_content=data)
    (d_in,), (d_out,) = it.get_input_details(), it.get_output_details()
    assert d_in["dtype"] == np.int8 and d_out["dtype"] == np.int8
    b = edgepack.BundleBuilder("digits", 1, io=helpers.digits_io(digits[0]))
    b.add_artifact("digits.int8-static.tflite", data, format="tflite", precision="int8-static",
                   io_quant={"inputs": [list(d_in["quantization"])], "outputs": [list(d_out["quantization"])]})
    m = runtime.load(b.write(tmp_path / "q.edgepack", [release_key]), trust)
    y = m.predict(x[100:])
    ref = helpers.forward(mlp_weights, x[100:])
    assert y.dtype == np.float32
    assert np.mean(y.argmax(1) == ref.argmax(1)) >= 0.9
    assert np.max(np.abs(y - ref)) < 0.1 * np.max(np.abs(ref))


def test_the_runnable_example_in_docs_runtime_md_runs():
    root = Path(runtime.__file__).resolve().parents[1]
    text = (root / "docs" / "runtime.md").read_text()
    code = text.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[1:] == ["True 1", "True 2", "2"]
