"""Latency and parity measurements shared by the EfficientNet benchmark scripts.

Latency is measured the way a device would run the model: batch 1, one
``run``/``invoke`` call per sample, in the device runtimes (onnxruntime's
``InferenceSession`` and ai-edge-litert's ``Interpreter``). Candidates are
timed *interleaved* in rounds, so a burst of load from other processes on this
shared machine hits every candidate alike instead of biasing one of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Latency",
    "litert_runner",
    "measure_interleaved",
    "ort_runner",
    "parity",
]

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float
    samples: int

    def to_dict(self) -> dict[str, float]:
        return {"p50_ms": round(self.p50_ms, 3), "p95_ms": round(self.p95_ms, 3), "samples": self.samples}


def ort_runner(model: bytes | str, threads: int) -> Runner:
    """A batch-any runner over an onnxruntime CPU session with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: x})[0]

    return run


def litert_runner(model: bytes, threads: int, layout: str = "NCHW") -> Runner:
    """A runner over ai-edge-litert's Interpreter; feeds one sample at a time.

    Integer I/O is (de)quantized with the tensor's own scale/zero point, the
    same rule the device runtime applies.
    """
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model, num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]

    def one(x: np.ndarray) -> np.ndarray:
        if layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        if inp["dtype"] != np.float32:
            scale, zp = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zp), info.min, info.max).astype(inp["dtype"])
        interp.set_tensor(inp["index"], np.ascontiguousarray(x))
        interp.invoke()
        y = interp.get_tensor(out["index"])
        if out["dtype"] != np.float32:
            scale, zp = out["quantization"]
            y = (y.astype(np.float32) - zp) * scale
        return y

    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([one(x[i : i + 1]) for i in range(len(x))])

    return run


def measure_interleaved(
    runners: dict[str, Runner], sample: np.ndarray, runs: int, rounds: int = 5, warmup: int = 5
) -> dict[str, Latency]:
    """p50/p95 of single-sample latency, ``runs`` calls per runner split over ``rounds``."""
    x = sample[:1]
    for run in runners.values():
        for _ in range(warmup):
            run(x)
    times: dict[str, list[float]] = {k: [] for k in runners}
    per_round = max(1, runs // rounds)
    for _ in range(rounds):
        for key, run in runners.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                run(x)
                times[key].append((time.perf_counter() - t0) * 1e3)
    return {
        k: Latency(float(np.percentile(v, 50)), float(np.percentile(v, 95)), len(v)) for k, v in times.items()
    }


def parity(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Max abs error, cosine and top-1 agreement of ``got`` against the original model."""
    ref = reference.astype(np.float64)
    out = got.astype(np.float64).reshape(ref.shape)
    cos = np.sum(ref * out, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1) + 1e-12)
    return {
        "max_abs": float(np.max(np.abs(ref - out))),
        "cosine_min": float(np.min(cos)),
        "top1_agreement": float(np.mean(ref.argmax(1) == out.argmax(1))),
    }
