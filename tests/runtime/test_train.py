"""Local last-layer training: both trainers improve a device's local accuracy on
non-IID digits, and the update plugs into a parameter update."""

from __future__ import annotations

import numpy as np
import pytest

import edgepack
import runtime
from edgepack import _params

TRAINER_NAMES = ["numpy", "torch"]
DEVICE_CLASSES = [3, 5, 8, 9]


@pytest.fixture(scope="session")
def device_data(digits):
    """Non-IID: the device sees only 4 classes, held out from the MLP's training half,
    through a dimmer sensor (gain 0.6) than the training data."""
    x, y = digits
    x, y = x[900:], y[900:]
    keep = np.isin(y, DEVICE_CLASSES)
    x, y = (x[keep] * 0.6).astype(np.float32), y[keep]
    n = len(y) // 2
    return (x[:n], y[:n]), (x[n:], y[n:])


def test_every_registered_trainer_is_tested():
    assert sorted(runtime.TRAINERS) == sorted(TRAINER_NAMES)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
@pytest.mark.parametrize("trainer", TRAINER_NAMES)
def test_local_training_measurably_improves_held_out_local_accuracy(bundle, trust, device_data, helpers,
                                                                    mlp_weights, trainer, fmt):
    (xtr, ytr), (xte, yte) = device_data
    m = runtime.load(bundle, trust, runtime.LoadConfig(backends=(fmt,)))
    before = float(np.mean(m.predict(xte, normalize=True).argmax(1) == yte))
    upd = runtime.train_local(m, xtr, ytr, trainer=trainer, normalize=True)
    assert upd.num_samples == len(ytr) and upd.base_version == 1 and upd.model == "digits"
    # apply the head to the artifact's own weights and run the real graph on held-out data
    if fmt == "onnx":
        new = {**mlp_weights, **upd.weights}
        after = float(np.mean(helpers.forward(new, (xte / 16).astype(np.float32)).argmax(1) == yte))
        assert set(upd.weights) == {"fc2.weight", "fc2.bias"}
    else:
        (blob, rebuilt) = _params.encode_param_update(
            model="digits", version=2, base_version=1,
            base_artifacts={m.artifact: ("tflite", m.artifact_bytes)}, new_weights={m.artifact: upd.weights},
            keys=[])
        y = helpers.run_artifact("tflite", rebuilt[m.artifact], (xte / 16).astype(np.float32))
        after = float(np.mean(y.argmax(1) == yte))
    assert after >= before + 0.05, (before, after)
    assert upd.metrics["local_accuracy_after"] > upd.metrics["local_accuracy_before"]


def test_numpy_and_torch_trainers_agree(bundle, trust, device_data):
    (xtr, ytr), _ = device_data
    m = runtime.load(bundle, trust)
    cfg = runtime.TrainConfig(epochs=3)
    a = runtime.train_local(m, xtr, ytr, trainer="numpy", config=cfg, normalize=True)
    b = runtime.train_local(m, xtr, ytr, trainer="torch", config=cfg, normalize=True)
    for k in a.weights:
        np.testing.assert_allclose(a.weights[k], b.weights[k], atol=1e-4)


def test_local_update_becomes_an_installable_parameter_update(tmp_path, trust, make_bundle, release_key,
                                                              device_data, digits):
    store = runtime.InstallStore(tmp_path / "state", trust)
    store.install(make_bundle(tmp_path / "b.edgepack", 1, formats=("onnx",))).raise_for_status()
    m = store.load_active()
    (xtr, ytr), (xte, yte) = device_data
    upd = runtime.train_local(m, xtr, ytr, normalize=True)
    blob, _ = runtime.encode_param_update(
        model=upd.model, version=2, base_version=upd.base_version,
        base_artifacts={upd.artifact: ("onnx", m.artifact_bytes)}, new_weights={upd.artifact: upd.weights},
        keys=[release_key], encoding="delta-add")
    assert store.apply_param_update(blob).ok
    m2 = store.load_active()
    assert m2.version == 2
    acc = [float(np.mean(mm.predict(xte, normalize=True).argmax(1) == yte)) for mm in (m, m2)]
    assert acc[1] >= acc[0] + 0.05


@pytest.mark.parametrize("labels, match", [
    (np.arange(3), "one per sample"),
    (np.full(10, 12), r"in \[0, 10\)"),
    (np.zeros(10, dtype=np.float32), "integers"),
])
def test_bad_labels_are_rejected(bundle, trust, digits, labels, match):
    m = runtime.load(bundle, trust)
    with pytest.raises(runtime.TrainingError, match=match):
        runtime.train_local(m, digits[0][:10], labels)


def test_unknown_trainer_is_a_clear_error(bundle, trust, digits):
    with pytest.raises(runtime.TrainingError, match="unknown trainer"):
        runtime.train_local(runtime.load(bundle, trust), digits[0][:4], digits[1][:4], trainer="jax")


def test_matmul_add_head_is_found_and_updated_in_its_stored_layout(tmp_path, mlp_weights, digits, device_data,
                                                                  release_key, trust, helpers):
    from onnx import TensorProto, helper, numpy_helper

    w = mlp_weights
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["h1"], transB=1),
             helper.make_node("Relu", ["h1"], ["feat"]),
             helper.make_node("MatMul", ["feat", "head.w"], ["mm"]),
             helper.make_node("Add", ["mm", "head.b"], ["logits"])]
    inits = [numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "shape"),
             numpy_helper.from_array(w["fc1.weight"], "fc1.weight"), numpy_helper.from_array(w["fc1.bias"], "fc1.bias"),
             numpy_helper.from_array(np.ascontiguousarray(w["fc2.weight"].T), "head.w"),
             numpy_helper.from_array(w["fc2.bias"], "head.b")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    b = edgepack.BundleBuilder("digits", 1, io=helpers.digits_io(digits[0]))
    b.add_artifact("digits.fp32.onnx", m.SerializeToString(), format="onnx", precision="fp32")
    model = runtime.load(b.write(tmp_path / "mm.edgepack", [release_key]), trust)
    (xtr, ytr), _ = device_data
    upd = runtime.train_local(model, xtr, ytr, normalize=True)
    assert upd.weights["head.w"].shape == (32, 10) and upd.weights["head.b"].shape == (10,)
    assert upd.metrics["local_accuracy_after"] > upd.metrics["local_accuracy_before"]
