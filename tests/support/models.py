"""Tiny real models built in code, and golden data for them."""

from __future__ import annotations

import io

import numpy as np


def tiny_onnx_model(in_features: int = 4, out_features: int = 3, seed: int = 0) -> bytes:
    """A real ONNX model (y = x @ W + b) built in code."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((in_features, out_features)).astype(np.float32)
    b = rng.standard_normal(out_features).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "W", "B"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", out_features])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def golden_npz(onnx_model: bytes, n: int = 4) -> bytes:
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)
    y = ort.InferenceSession(onnx_model, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    buf = io.BytesIO()
    np.savez(buf, in__input=x, out__logits=y, **{"tiny.fp32.onnx__logits": y})
    return buf.getvalue()


TINY_IO = {
    "task": "classification",
    "labels": ["a", "b", "c"],
    "inputs": [{"name": "input", "shape": ["batch", 4], "dtype": "float32", "layout": "NC",
                "normalization": None, "range": {"min": -4.0, "max": 4.0}, "reference": None}],
    "outputs": [{"name": "logits", "shape": ["batch", 3], "dtype": "float32"}],
}




def onnx_linear(W: np.ndarray, b: np.ndarray) -> bytes:
    """logits = x @ W + b, with W and b as raw-data initializers (patchable by parameter updates):
    the same model ``edgepack fl simulate`` ships."""
    from edgepack.flsim._data import linear_onnx

    return linear_onnx(W, b)


def softmax_regression(x: np.ndarray, y: np.ndarray, steps: int, W=None, b=None, lr: float = 0.5):
    """Full-batch gradient descent on cross-entropy from (W, b) (zeros by default); float32 result."""
    from edgepack.flsim._data import initial_weights

    return initial_weights(x, y, steps, lr, start=None if W is None else (W, b))
