"""Run an artifact in the DEVICE runtimes (onnxruntime, ai-edge-litert's
Interpreter), exactly as a device would: float32 in, float32 out, with int8
I/O (de)quantized from the tensor's own scale and zero point."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepack import ConversionError

__all__ = ["RUNNERS", "Session", "open_session"]


@dataclass
class Session:
    format: str
    impl: Any
    input_names: list[str]
    output_names: list[str]
    fixed_batch: int | None = None
    #: [(scale, zero_point)] per input/output when the tensor is integer
    io_quant: dict[str, list[list[float]]] | None = None

    def run(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        return _RUN[self.format](self, xs)

    def time_one(self, xs: list[np.ndarray], runs: int, warmup: int) -> list[float]:
        """Wall time (ms) of ``runs`` single-batch calls, after ``warmup``."""
        for _ in range(warmup):
            self.run(xs)
        out = []
        for _ in range(runs):
            t = time.perf_counter()
            self.run(xs)
            out.append((time.perf_counter() - t) * 1e3)
        return out


def _ort_open(data: bytes, threads: int) -> Session:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        s = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        raise ConversionError(f"onnxruntime cannot load the artifact: {e}") from e
    return Session("onnx", s, [i.name for i in s.get_inputs()], [o.name for o in s.get_outputs()])


def _ort_run(s: Session, xs: list[np.ndarray]) -> list[np.ndarray]:
    return list(s.impl.run(None, dict(zip(s.input_names, xs, strict=False))))


def _tfl_open(data: bytes, threads: int) -> Session:
    from ai_edge_litert.interpreter import Interpreter
    try:
        it = Interpreter(model_content=bytes(data), num_threads=threads)
        it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ConversionError(f"ai-edge-litert cannot load the artifact: {e}") from e
    ins, outs = it.get_input_details(), it.get_output_details()
    sig = ins[0].get("shape_signature", ins[0]["shape"])
    fixed = int(ins[0]["shape"][0]) if len(sig) and sig[0] != -1 else None
    quant = None
    if any(d["dtype"] != np.float32 for d in (*ins, *outs)):
        quant = {"inputs": [list(map(float, d["quantization"])) for d in ins],
                 "outputs": [list(map(float, d["quantization"])) for d in outs]}
    return Session("tflite", it, [d["name"] for d in ins], [d["name"] for d in outs], fixed, quant)


def _quant_in(x: np.ndarray, d: dict) -> np.ndarray:
    if d["dtype"] == np.float32:
        return x.astype(np.float32, copy=False)
    scale, zp = d["quantization"]
    info = np.iinfo(d["dtype"])
    return np.clip(np.round(x / scale + zp), info.min, info.max).astype(d["dtype"])


def _dequant_out(y: np.ndarray, d: dict) -> np.ndarray:
    if d["dtype"] == np.float32:
        return y
    scale, zp = d["quantization"]
    return ((y.astype(np.float32) - zp) * scale).astype(np.float32)


def _tfl_invoke(it: Any, xs: list[np.ndarray]) -> list[np.ndarray]:
    ins = it.get_input_details()
    if tuple(ins[0]["shape"]) != xs[0].shape:
        for d, x in zip(ins, xs, strict=False):
            it.resize_tensor_input(d["index"], list(x.shape))
        it.allocate_tensors()
        ins = it.get_input_details()
    for d, x in zip(ins, xs, strict=False):
        it.set_tensor(d["index"], _quant_in(x, d))
    it.invoke()
    return [_dequant_out(it.get_tensor(d["index"]).copy(), d) for d in it.get_output_details()]


def _tfl_run(s: Session, xs: list[np.ndarray]) -> list[np.ndarray]:
    b = s.fixed_batch
    if b is None:
        return _tfl_invoke(s.impl, xs)
    parts = [_tfl_invoke(s.impl, [x[i:i + b] for x in xs]) for i in range(0, xs[0].shape[0], b)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


#: artifact format -> (open, run)
RUNNERS: dict[str, Callable[[bytes, int], Session]] = {"onnx": _ort_open, "tflite": _tfl_open}
_RUN: dict[str, Callable[[Session, list[np.ndarray]], list[np.ndarray]]] = {"onnx": _ort_run, "tflite": _tfl_run}


def open_session(fmt: str, data: bytes, threads: int = 1) -> Session:
    """Load artifact bytes in the device runtime for ``fmt``.

    Raises:
        ConversionError: the runtime refuses the artifact.
    """
    return RUNNERS[fmt](data, threads)


def run_batched(s: Session, xs: list[np.ndarray], batch: int = 64) -> list[np.ndarray]:
    n = xs[0].shape[0]
    parts = [s.run([x[i:i + batch] for x in xs]) for i in range(0, n, batch)]
    return [np.concatenate([p[k] for p in parts]).astype(np.float32, copy=False) for k in range(len(parts[0]))]
