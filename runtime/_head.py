"""Find a model's trainable head (its last dense layer) and a way to compute the
features that feed it, without the onnx or tensorflow packages.

ONNX: the node producing the first graph output must be ``Gemm`` (B and C
initializers) or ``Add(MatMul(x, W), b)``; the features are its data input,
exposed by appending that tensor to the graph outputs at the protobuf wire level.
TFLite: the op producing the first output must be ``FULLY_CONNECTED`` with
constant weights and bias; the features are read back from the interpreter
with ``experimental_preserve_all_tensors``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgepack._weights import FlatTable, _fields, _varint, read_weights

from ._backends import BackendOptions, get_backend
from ._errors import TrainingError

__all__ = ["Head", "find_head"]


@dataclass
class Head:
    """The last dense layer: logits = features @ weight.T + bias (weight is [out, in])."""

    weight_name: str
    bias_name: str
    weight: np.ndarray
    bias: np.ndarray
    transposed: bool          # True if the artifact stores the weight as [in, out]
    features: Callable[[list[np.ndarray]], np.ndarray]

    def stored(self, weight: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
        """New values keyed and laid out as the artifact stores them (a parameter update's input)."""
        w = weight.T if self.transposed else weight
        return {self.weight_name: np.ascontiguousarray(w, dtype=np.float32),
                self.bias_name: np.asarray(bias, dtype=np.float32)}


def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _enc_varint(field << 3 | 2) + _enc_varint(len(payload)) + payload


def _strings(b: bytes, s: int, e: int, num: int) -> list[str]:
    return [b[a:z].decode() for n, wt, a, z in _fields(b, s, e) if n == num and wt == 2]


def _onnx_graph(b: bytes) -> tuple[int, int, int]:
    """(tag start, payload start, payload end) of ModelProto.graph."""
    i = 0
    while i < len(b):
        tag_start = i
        key, i = _varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 2:
            n, i = _varint(b, i)
            if num == 7:
                return tag_start, i, i + n
            i += n
        elif wt == 0:
            _, i = _varint(b, i)
        else:
            i += 8 if wt == 1 else 4
    raise TrainingError("ONNX model has no graph")


def _onnx_head(model: object) -> Head:
    b: bytes = model.artifact_bytes  # type: ignore[attr-defined]
    tag, gs, ge = _onnx_graph(b)
    nodes, outputs = [], []
    for num, wt, a, z in _fields(b, gs, ge):
        if num == 1 and wt == 2:
            attrs = {}
            for n2, w2, a2, z2 in _fields(b, a, z):
                if n2 == 5 and w2 == 2:
                    name = _strings(b, a2, z2, 1)
                    ints = [v for n3, w3, v, _ in _fields(b, a2, z2) if n3 == 3 and w3 == 0]
                    if name and ints:
                        attrs[name[0]] = ints[0]
            op = _strings(b, a, z, 4)
            nodes.append((op[0] if op else "", _strings(b, a, z, 1), _strings(b, a, z, 2), attrs))
        elif num == 12 and wt == 2:
            outputs += _strings(b, a, z, 1)
    producer = {o: n for n in nodes for o in n[2]}
    weights = read_weights("onnx", b)
    last = producer.get(model.session.output_names[0])  # type: ignore[attr-defined]
    if last and last[0] == "Gemm" and len(last[1]) == 3 and last[1][1] in weights and last[1][2] in weights:
        feat, wn, bn = last[1]
        transposed = not last[3].get("transB", 0)
    elif last and last[0] == "Add" and producer.get(last[1][0], ("",))[0] == "MatMul":
        mm = producer[last[1][0]]
        feat, wn, bn, transposed = mm[1][0], mm[1][1], last[1][1], True
    else:
        raise TrainingError("the ONNX model's first output is not produced by a dense layer (Gemm or MatMul+Add)",
                            hint="export the classifier head as Gemm/MatMul+Add, or train with a custom Trainer")
    w = weights[wn].astype(np.float32)
    value_info = _ld(1, feat.encode()) + _ld(2, _ld(1, _enc_varint(1 << 3 | 0) + _enc_varint(1)))
    graph = b[gs:ge] + _ld(12, value_info)
    patched = b[:tag] + _ld(7, graph) + b[ge:]
    entry = {"path": model.artifact, "_n_inputs": len(model.io.inputs), "_n_outputs": 1,  # type: ignore[attr-defined]
             "io_names": {"inputs": model.session.input_names, "outputs": [feat]}}  # type: ignore[attr-defined]
    sess = get_backend("onnx").load(patched, entry, BackendOptions(model.config.num_threads))  # type: ignore[attr-defined]
    return Head(wn, bn, w.T if transposed else w, weights[bn].astype(np.float32), transposed,
                lambda xs: sess.run(xs)[0].reshape(len(xs[0]), -1))


def _tflite_head(model: object) -> Head:
    b: bytes = model.artifact_bytes  # type: ignore[attr-defined]
    root = FlatTable(b, int.from_bytes(b[:4], "little"))
    codes = [max(c.scalar(3, "<i"), c.scalar(0, "<b")) for c in root.tables(1)]
    sub = root.tables(2)[0]
    tensors = sub.tables(0)
    out_idx = sub.ints(2)[0]
    fc = [op for op in sub.tables(3) if codes[op.scalar(0, "<I")] == 9 and out_idx in op.ints(2)]
    if not fc or len(fc[0].ints(1)) < 3 or fc[0].ints(1)[2] < 0:
        raise TrainingError("the TFLite model's first output is not produced by FULLY_CONNECTED with a bias",
                            hint="train with the ONNX artifact, or a custom Trainer")
    fi, wi, bi = fc[0].ints(1)[:3]
    weights = read_weights("tflite", b)
    wn, bn = tensors[wi].string(3), tensors[bi].string(3)
    if weights[wn].dtype != np.float32:
        raise TrainingError("local training needs a float32 head; this artifact is quantized",
                            hint="load the fp32 artifact for training")
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        # keeping intermediates costs memory; acceptable for a training-only interpreter that
        # exists just to read the penultimate features
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        interp = Interpreter(model_content=b, experimental_preserve_all_tensors=True)
    in_idx = [d["index"] for d in interp.get_input_details()]

    def features(xs: list[np.ndarray]) -> np.ndarray:
        for i, x in zip(in_idx, xs, strict=True):
            interp.resize_tensor_input(i, list(x.shape))
        interp.allocate_tensors()
        for i, x in zip(in_idx, xs, strict=True):
            interp.set_tensor(i, x)
        interp.invoke()
        return interp.get_tensor(fi).reshape(len(xs[0]), -1)

    return Head(wn, bn, weights[wn].copy(), weights[bn].copy(), False, features)


_FINDERS = {"onnx": _onnx_head, "tflite": _tflite_head}


def find_head(model: object) -> Head:
    """Raises: TrainingError if the model's format has no head finder or no dense head."""
    fmt = model.format  # type: ignore[attr-defined]
    if fmt not in _FINDERS:
        raise TrainingError(f"no head finder for {fmt!r}")
    return _FINDERS[fmt](model)
