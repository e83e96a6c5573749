"""The simulation's data and first model: non-IID digits splits and a small signed digits bundle.

scikit-learn's bundled digits (1797 8x8 images, no download) are split once, by
``seed``, into a held-out evaluation set (the server's champion/challenger set),
a tiny seed set (``seed_per_class`` images of each class, the only data the
first model sees) and one local set per device. The device sets are non-IID:
each device has ``dominant`` classes of its own, and an image of class ``c``
goes to a device that counts ``c`` as dominant with odds ``skew`` to 1.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._keys import SigningKey

__all__ = ["Splits", "digits_bundle", "initial_weights", "linear_onnx", "split_digits"]


@dataclass
class Splits:
    eval_x: np.ndarray
    eval_y: np.ndarray
    seed_x: np.ndarray
    seed_y: np.ndarray
    devices: list[tuple[np.ndarray, np.ndarray]]
    dominant: list[list[int]]


def _need(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        from ._errors import SimulationError

        raise SimulationError(f"the simulation needs the {module} package", where=module,
                              hint="pip install -c constraints.txt 'edgepack[simulate]'")


def split_digits(n_devices: int, seed: int, *, eval_fraction: float = 0.3, seed_per_class: int = 2,
                 dominant: int = 3, skew: float = 25.0) -> Splits:
    """Split the digits data (see the module doc)."""
    _need("sklearn")
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_eval = int(round(eval_fraction * len(y)))
    ev, pool = order[:n_eval], order[n_eval:]
    seed_idx = np.concatenate([pool[y[pool] == c][:seed_per_class] for c in range(10)])
    rest = np.setdiff1d(pool, seed_idx)
    rest = rest[rng.permutation(len(rest))]
    dom = [sorted({(dominant * i + k) % 10 for k in range(dominant)}) for i in range(n_devices)]
    odds = np.array([[skew if c in dom[i] else 1.0 for i in range(n_devices)] for c in range(10)])
    owner = np.array([rng.choice(n_devices, p=odds[y[i]] / odds[y[i]].sum()) for i in rest])
    devices = [(x[rest[owner == i]], y[rest[owner == i]]) for i in range(n_devices)]
    return Splits(x[ev], y[ev], x[seed_idx], y[seed_idx], devices, dom)


def initial_weights(x: np.ndarray, y: np.ndarray, steps: int = 3, lr: float = 0.5,
                    start: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A softmax regression trained by full-batch gradient descent, from zeros or from ``start``.

    Three steps from zeros (the default) give the fleet's barely trained first champion.
    """
    W = np.zeros((x.shape[1], 10)) if start is None else start[0].astype(np.float64).copy()
    b = np.zeros(10) if start is None else start[1].astype(np.float64).copy()
    onehot = np.eye(10)[y]
    for _ in range(steps):
        z = x @ W + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(x)
        W -= lr * x.T @ g
        b -= lr * g.sum(0)
    return W.astype(np.float32), b.astype(np.float32)


def linear_onnx(W: np.ndarray, b: np.ndarray) -> bytes:
    """``logits = x @ W + b``: the runtime's trainer finds this head (``Add(MatMul(x, W), b)``)."""
    _need("onnx")
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])],
        "digits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", W.shape[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", W.shape[1]])],
        [numpy_helper.from_array(W.astype(np.float32), "W"), numpy_helper.from_array(b.astype(np.float32), "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def digits_bundle(W: np.ndarray, b: np.ndarray, key: SigningKey, path: Path, golden_x: np.ndarray) -> Path:
    """A signed ``digits`` v1 bundle with golden data (a device's health check runs it).

    Raises:
        SimulationError: onnxruntime cannot run the model it just built (a bug).
    """
    import onnxruntime as ort

    from .._bundle import BundleBuilder

    onnx = linear_onnx(W, b)
    try:
        out = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"]).run(None, {"x": golden_x})[0]
    except Exception as e:  # noqa: BLE001 (onnxruntime raises its own bare classes)
        from ._errors import SimulationError

        raise SimulationError(f"onnxruntime cannot run the initial model: {e}") from e
    io_spec = {"task": "classification", "labels": [str(i) for i in range(10)],
               "inputs": [{"name": "x", "shape": ["N", W.shape[0]], "dtype": "float32",
                           "range": {"min": 0.0, "max": 1.0}}],
               "outputs": [{"name": "logits", "shape": ["N", 10], "dtype": "float32"}]}
    bb = BundleBuilder("digits", 1, io=io_spec)
    bb.add_artifact("model.onnx", onnx, format="onnx", precision="fp32")
    buf = io.BytesIO()
    np.savez(buf, in__x=golden_x, out__logits=out, **{"model.onnx__logits": out})
    bb.set_golden(buf.getvalue())
    return Path(bb.write(path, [key]))
