"""Measure a torch candidate the way a device would run it: export to ONNX,
optionally quantize with onnxruntime, then accuracy, size and p50 latency
in onnxruntime at batch 1. Used by ``_search`` for each candidate and by the
compression benchmark; the final build re-exports through the pipeline and
checks parity there.

The search exports with the TorchScript exporter by default because it takes
~0.1 s per tiny model against ~3-8 s for ``dynamo=True`` (measured here), and a
search exports many candidates; ``exporter="dynamo"`` is available.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from typing import Any

import numpy as np

from edgepack import ConfigError, ConversionError

__all__ = ["EXPORTERS", "QUANTIZERS", "evaluate", "export", "quantize"]


def _export_torchscript(model: Any, example: Any, path: str, opset: int) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's own deprecation notice
        torch.onnx.export(model, (example,), path, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                          dynamo=False)


def _export_dynamo(model: Any, example: Any, path: str, opset: int) -> None:
    import torch

    prog = torch.onnx.export(model, (example,), input_names=["input"], output_names=["logits"],
                             dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
                             opset_version=opset, dynamo=True, verbose=False)
    if prog is None:
        raise ConversionError("torch.onnx.export(dynamo=True) returned no program")
    prog.save(path)


EXPORTERS = {"torchscript": _export_torchscript, "dynamo": _export_dynamo}


def export(model: Any, example: np.ndarray, exporter: str = "torchscript", opset: int = 18) -> bytes:
    """ONNX bytes of ``model`` with a dynamic batch.

    Raises:
        ConfigError: unknown exporter. ConversionError: the export fails.
    """
    import torch

    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown exporter {exporter!r}", hint=f"use one of {sorted(EXPORTERS)}")
    model.eval()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        try:
            with torch.no_grad():
                EXPORTERS[exporter](model, torch.as_tensor(example[:1]), path, opset)
        except Exception as e:  # exporters raise many unrelated types
            raise ConversionError(f"ONNX export ({exporter}) failed: {e}") from e
        with open(path, "rb") as f:
            return f.read()


class _Reader:
    def __init__(self, x: np.ndarray) -> None:
        self._it = iter([{"input": x[i:i + 1]} for i in range(len(x))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _q_fp16(src: str, dst: str, calib: np.ndarray | None, method: str, per_channel: bool) -> None:
    import onnx
    from onnxconverter_common import float16

    # keep_io_types: the device feeds float32; the casts sit inside the graph (as in _quantize_onnx)
    onnx.save(float16.convert_float_to_float16(onnx.load(src), keep_io_types=True), dst)


def _q_dynamic(src: str, dst: str, calib: np.ndarray | None, method: str, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=per_channel)


def _q_static(src: str, dst: str, calib: np.ndarray | None, method: str, per_channel: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if calib is None:
        from ._errors import CalibrationRequiredError

        raise CalibrationRequiredError("int8-static needs calibration data", where="search calibration data")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    # uint8 activations: signed ones made EfficientNet-Lite0 3.5x slower than fp32 under ORT here (issue #3)
    quantize_static(src, dst, _Reader(calib.astype(np.float32)), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=methods[method])


QUANTIZERS = {"fp16": _q_fp16, "int8-dynamic": _q_dynamic, "int8-static": _q_static}


def quantize(onnx_bytes: bytes, precision: str, calib: np.ndarray | None = None, method: str = "minmax",
             per_channel: bool = True) -> bytes:
    """The artifact at ``precision`` (``fp32`` returns it unchanged).

    Raises:
        ConfigError: unknown precision. CalibrationRequiredError: static without data.
    """
    if precision == "fp32":
        return onnx_bytes
    if precision not in QUANTIZERS:
        raise ConfigError(f"search precision {precision!r} is not supported",
                          hint=f"use fp32 or one of {sorted(QUANTIZERS)}")
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "f.onnx"), os.path.join(d, "q.onnx")
        with open(src, "wb") as f:
            f.write(onnx_bytes)
        root = logging.getLogger()
        level = root.level
        # ORT logs a "consider pre-processing" warning per call on the root logger; the search
        # measures the result either way, so keep the terminal readable
        root.setLevel(logging.ERROR)
        try:
            QUANTIZERS[precision](src, dst, calib, method, per_channel)
        finally:
            root.setLevel(level)
        with open(dst, "rb") as f:
            return f.read()


def session(data: bytes, threads: int = 1) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def latency_ms(sess: Any, x1: np.ndarray, runs: int = 50, warmup: int = 5) -> dict[str, float]:
    """p50/p95 wall time of single-batch calls."""
    import time

    name = sess.get_inputs()[0].name
    for _ in range(warmup):
        sess.run(None, {name: x1})
    t = []
    for _ in range(runs):
        s = time.perf_counter()
        sess.run(None, {name: x1})
        t.append((time.perf_counter() - s) * 1e3)
    return {"p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95))}


def evaluate(data: bytes, x: np.ndarray, y: np.ndarray | None = None, ref: np.ndarray | None = None,
             threads: int = 1, runs: int = 50) -> dict[str, Any]:
    """Accuracy (labels), agreement and max abs error vs ``ref`` logits, size and latency in ORT."""
    sess = session(data, threads)
    name = sess.get_inputs()[0].name
    out = np.concatenate([sess.run(None, {name: x[i:i + 256]})[0] for i in range(0, len(x), 256)])
    res: dict[str, Any] = {"size": len(data), "latency": latency_ms(sess, x[:1], runs)}
    res["accuracy"] = None if y is None else float((out.argmax(-1) == np.asarray(y)).mean())
    res["agreement"] = None if ref is None else float((out.argmax(-1) == ref.argmax(-1)).mean())
    res["max_abs"] = None if ref is None else float(np.abs(out - ref).max())
    return res
