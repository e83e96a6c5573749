"""Measure a torch candidate the way a TFLite device would run it: convert
with litert-torch (batch 1, as the build does), optionally quantize the
flatbuffer with ai-edge-quantizer, then accuracy, size and p50 latency in
ai-edge-litert's ``Interpreter``. The TFLite twin of ``_onnx_eval``, used by
``_search`` for TFLite candidates and by the compression benchmark.

``param_count`` counts the weights stored in a flatbuffer (constant tensors),
so a test can prove that structured pruning made the TFLite artifact itself
smaller, not only the torch model.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

import numpy as np

from edgepack import ConversionError

from . import _quantize_tflite
from ._latency import LatencyConfig
from ._latency import run as latency_run
from ._runners import open_session, run_batched

__all__ = ["evaluate", "export", "param_count", "quantize"]


def export(model: Any, example: np.ndarray) -> bytes:
    """fp32 TFLite bytes of a torch ``model``, traced at batch 1 (see ``_export_tflite``).

    Raises:
        ConversionError: litert-torch cannot convert the model.
    """
    import torch

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import litert_torch

    litert_torch.config.show_progress = False
    model.eval()
    sample = (torch.as_tensor(np.asarray(example[:1], dtype=np.float32)),)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            edge = litert_torch.convert(model, sample)
    except Exception as e:  # litert-torch raises JAX/MLIR/export errors of many types
        raise ConversionError(f"TFLite export (litert-torch) failed: {e}") from e
    return bytes(edge.model_content())


def quantize(data: bytes, precision: str, calib: np.ndarray | None = None, *, int8_io: bool = True,
             method: str = "minmax") -> bytes:
    """The flatbuffer at ``precision`` (``fp32`` returns it unchanged); see ``_quantize_tflite``.

    Raises:
        CalibrationRequiredError: int8-static without data. UnsupportedError: a quantizer failure.
    """
    if precision == "fp32":
        return data
    return _quantize_tflite.run(data, _quantize_tflite.TfliteQuantizeConfig(
        precision=precision, calibration=calib, int8_io=int8_io, calibration_method=method))


def param_count(data: bytes) -> int:
    """Weights stored in a TFLite flatbuffer: elements of its constant float / 8- or 16-bit integer tensors.

    A constant is an op input that no op produces and that is not a graph input; LiteRT keeps its
    buffer in the file. int32/int64 constants are left out: they are shapes, permutations and axes
    (10 elements in the digits CNN), and, in int8-static models, the int32 biases.
    """
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=bytes(data))
    ops = it._get_ops_details()  # noqa: SLF001 -- the only public-enough listing of op inputs/outputs
    produced = {i for op in ops for i in op["outputs"]}
    graph_in = {d["index"] for d in it.get_input_details()}
    consts = {i for op in ops for i in op["inputs"] if i >= 0 and i not in produced and i not in graph_in}
    det = {d["index"]: d for d in it.get_tensor_details()}
    return int(sum(int(np.prod(det[i]["shape"])) for i in consts
                   if i in det and np.dtype(det[i]["dtype"]) not in (np.int32, np.int64)))


def evaluate(data: bytes, x: np.ndarray, y: np.ndarray | None = None, ref: np.ndarray | None = None,
             threads: int = 1, runs: int = 50) -> dict[str, Any]:
    """Accuracy (labels), agreement and max abs error vs ``ref`` logits, size and batch-1 latency in LiteRT.

    Raises:
        ConversionError: the interpreter refuses the artifact.
    """
    out = run_batched(open_session("tflite", data, threads), [np.asarray(x, dtype=np.float32)])[0]
    lat = latency_run("tflite", data, [np.asarray(x[:1], dtype=np.float32)], LatencyConfig(runs=runs, threads=threads))
    res: dict[str, Any] = {"size": len(data), "latency": lat, "outputs": out}
    res["accuracy"] = None if y is None else float((out.argmax(-1) == np.asarray(y)).mean())
    res["agreement"] = None if ref is None else float((out.argmax(-1) == ref.argmax(-1)).mean())
    res["max_abs"] = None if ref is None else float(np.abs(out - ref).max())
    return res
