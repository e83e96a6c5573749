"""Fixtures for the runtime tests: real tiny models (ONNX via onnx.helper,
TFLite via TensorFlow), real Ed25519 keys and real signed bundles.

Heavy things (the sklearn-trained MLP, the TFLite conversion) are session-scoped
so the whole folder stays well under its 3-minute budget.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgepack

EDGES = np.linspace(0.0, 16.0, 11)


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32).reshape(-1, 1, 8, 8), d.target.astype(np.int64)


@pytest.fixture(scope="session")
def mlp_weights(digits) -> dict[str, np.ndarray]:
    """A 64-32-10 MLP trained briefly on the first half of digits (inputs scaled by 1/16)."""
    from sklearn.neural_network import MLPClassifier

    x, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=60, random_state=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(x[:900].reshape(900, -1) / 16.0, y[:900])
    (w1, w2), (b1, b2) = clf.coefs_, clf.intercepts_
    # stored torch-style ([out, in]) so Gemm uses transB=1, like torch.onnx.export
    return {"fc1.weight": w1.T.astype(np.float32).copy(), "fc1.bias": b1.astype(np.float32),
            "fc2.weight": w2.T.astype(np.float32).copy(), "fc2.bias": b2.astype(np.float32)}


def forward(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = np.maximum(x.reshape(len(x), -1) @ w["fc1.weight"].T + w["fc1.bias"], 0)
    return (h @ w["fc2.weight"].T + w["fc2.bias"]).astype(np.float32)


def make_onnx(w: dict[str, np.ndarray], *, raw: bool = True) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def init(name: str, a: np.ndarray) -> Any:
        if raw:
            return numpy_helper.from_array(a, name)
        return helper.make_tensor(name, TensorProto.FLOAT, a.shape, a.reshape(-1).tolist())

    nodes = [
        helper.make_node("Reshape", ["input", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc1.weight", "fc1.bias"], ["h1"], transB=1),
        helper.make_node("Relu", ["h1"], ["feat"]),
        helper.make_node("Gemm", ["feat", "fc2.weight", "fc2.bias"], ["logits"], transB=1),
    ]
    inits = [numpy_helper.from_array(np.array([-1, 64], dtype=np.int64), "shape")]
    inits += [init(k, v) for k, v in w.items()]
    g = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()


def make_tflite(w: dict[str, np.ndarray], calibration: np.ndarray | None = None) -> bytes:
    """fp32 TFLite; with ``calibration``, full-integer int8 with int8 inputs and outputs."""
    import tensorflow as tf

    inp = tf.keras.Input((1, 8, 8), batch_size=None, name="input")
    h = tf.keras.layers.Reshape((64,))(inp)
    h = tf.keras.layers.Dense(32, activation="relu", name="fc1")(h)
    out = tf.keras.layers.Dense(10, name="fc2")(h)
    km = tf.keras.Model(inp, out)
    km.get_layer("fc1").set_weights([w["fc1.weight"].T, w["fc1.bias"]])
    km.get_layer("fc2").set_weights([w["fc2.weight"].T, w["fc2.bias"]])
    conv = tf.lite.TFLiteConverter.from_keras_model(km)
    if calibration is not None:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([calibration[i:i + 1]] for i in range(len(calibration)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


@pytest.fixture(scope="session")
def onnx_bytes(mlp_weights) -> bytes:
    return make_onnx(mlp_weights)


@pytest.fixture(scope="session")
def tflite_bytes(mlp_weights) -> bytes:
    return make_tflite(mlp_weights)


@pytest.fixture(scope="session")
def release_key() -> edgepack.SigningKey:
    return edgepack.generate_key()


@pytest.fixture(scope="session")
def trust(release_key) -> edgepack.Trust:
    return edgepack.Trust.of([release_key.public])


def digits_io(x: np.ndarray) -> dict[str, Any]:
    hist, _ = np.histogram(x.reshape(-1), bins=EDGES)
    return {
        "task": "classification", "labels": [str(i) for i in range(10)],
        "inputs": [{"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32", "layout": "NCHW",
                    "normalization": {"mean": [0.0], "std": [16.0]}, "range": {"min": 0.0, "max": 16.0},
                    "reference": {"edges": EDGES.tolist(), "probs": (hist / hist.sum()).tolist()}}],
        "outputs": [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}],
    }


def golden_npz(x: np.ndarray, expected: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{"in__input": x}, **{f"{k}__logits": v for k, v in expected.items()})
    return buf.getvalue()


def run_artifact(fmt: str, data: bytes, x: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        import onnxruntime as ort

        s = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return s.run(None, {s.get_inputs()[0].name: x})[0]
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)
    d = it.get_input_details()[0]
    it.resize_tensor_input(d["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(d["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


@pytest.fixture(scope="session")
def make_bundle(digits, mlp_weights, onnx_bytes, tflite_bytes, release_key) -> Callable[..., Path]:
    """make_bundle(out, version, formats=("onnx","tflite"), weights=None, golden_override=None, keys=None)."""
    x_all, _ = digits

    def build(out: Path, version: int = 1, *, formats: tuple[str, ...] = ("onnx", "tflite"),
              weights: dict[str, np.ndarray] | None = None, corrupt_golden: bool = False,
              keys: list[edgepack.SigningKey] | None = None, name: str = "digits",
              expires_in: Any = None) -> Path:
        w = weights or mlp_weights
        arts = {"onnx": onnx_bytes if weights is None else make_onnx(w),
                "tflite": tflite_bytes if weights is None else make_tflite(w)}
        x = x_all[:4] / 16.0
        x = x.astype(np.float32)
        kw = {} if expires_in is None else {"expires_in": expires_in}
        b = edgepack.BundleBuilder(name, version, io=digits_io(x_all), lineage={"seed": 0}, **kw)
        expected = {"out": forward(w, x)}
        for fmt in formats:
            fname = f"digits.fp32.{fmt}"
            b.add_artifact(fname, arts[fmt], format=fmt, precision="fp32", parity={"passed": True})
            y = run_artifact(fmt, arts[fmt], x)
            expected[fname] = -y if corrupt_golden else y
        b.set_golden(golden_npz(x, expected), atol=1e-4, rtol=1e-3)
        return b.write(out, keys if keys is not None else [release_key])

    return build


@pytest.fixture
def bundle(tmp_path, make_bundle) -> Path:
    return make_bundle(tmp_path / "digits-1.edgepack", 1)


@pytest.fixture(scope="session")
def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGEPACK_")}


@pytest.fixture(scope="session")
def helpers() -> Any:
    """The model-building helpers, for tests (importlib mode cannot import conftest directly)."""
    from types import SimpleNamespace

    return SimpleNamespace(forward=forward, make_onnx=make_onnx, make_tflite=make_tflite,
                           run_artifact=run_artifact, golden_npz=golden_npz, digits_io=digits_io)


def tamper_bundle(src: Path, out: Path, suffix: str) -> Path:
    """Re-write ``src`` with one byte flipped in the member ending in ``suffix``, keeping its signatures."""
    from edgepack._bundle import open_bundle, write_bundle_members

    ob = open_bundle(src)
    members = {}
    for name in ob.reader.names():
        if name in ("manifest.json", "signatures.json"):
            continue
        data = ob.reader.read_member(name, 1 << 30)
        if name.endswith(suffix):
            data = data[:-1] + bytes([data[-1] ^ 1])
        members[name] = data
    return write_bundle_members(out, ob.manifest_doc, members, [], ob.signatures)


@pytest.fixture(scope="session")
def tamper() -> Callable[[Path, Path, str], Path]:
    return tamper_bundle
