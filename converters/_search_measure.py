"""How the search turns a (pruned) torch model into one artifact and measures it on the
device runtime of its target: ``Variant`` (target x precision x that target's quantization
settings) and ``MEASURES`` (target -> a measure factory). ONNX is exported with
``_onnx_eval`` and scored in onnxruntime; TFLite with ``_tflite_eval`` (litert-torch,
ai-edge-quantizer) and scored in ai-edge-litert's Interpreter. Split from ``_search`` so
that module keeps the loop, the budget and the front.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _onnx_eval, _tflite_eval, _transport

__all__ = ["MEASURES", "Measure", "Variant", "measure_on_target"]


@dataclass(frozen=True)
class Variant:
    """How a (pruned) model becomes one artifact: the target runtime, the precision and that
    target's quantization settings (``None`` where a setting does not apply)."""

    target: str
    precision: str
    calibration_method: str | None = None
    per_channel: bool | None = None
    int8_io: bool | None = None

    @property
    def label(self) -> str:
        parts = [self.precision]
        if self.calibration_method:
            parts.append(self.calibration_method)
        if self.per_channel is not None:
            parts.append("per-channel" if self.per_channel else "per-tensor")
        if self.int8_io is not None:
            parts.append("int8-io" if self.int8_io else "float-io")
        return f"{self.target}:" + "/".join(parts)


Measure = Callable[[Any, Variant], dict[str, Any]]


class _Fp32Cache:
    """The fp32 export of the model being measured: every variant of one pruned model shares it
    (a litert-torch conversion takes seconds). Holds one model at a time; a reference to the model
    keeps its ``id`` from being reused while cached."""

    def __init__(self, export: Callable[[Any, np.ndarray], bytes]) -> None:
        self._export, self._model, self._data = export, None, b""

    def get(self, model: Any, example: np.ndarray) -> bytes:
        if self._model is not model:
            self._model, self._data = model, self._export(model, example)
        return self._data


def _ort_measure(x: np.ndarray, y: np.ndarray, calib: np.ndarray | None, cfg: Any) -> Measure:
    """ONNX: TorchScript (or dynamo) export, ORT quantization, scored in onnxruntime."""
    cache = _Fp32Cache(lambda m, ex: _onnx_eval.export(m, ex, cfg.exporter))

    def measure(model: Any, v: Variant) -> dict[str, Any]:
        art = _onnx_eval.quantize(cache.get(model, x), v.precision, calib, v.calibration_method or "minmax",
                                  per_channel=True if v.per_channel is None else v.per_channel)
        r = _onnx_eval.evaluate(art, x, y, threads=cfg.threads, runs=cfg.latency_runs)
        return {"accuracy": r["accuracy"], "size": r["size"], "size_xz": _transport.measure(art)["xz"],
                "latency_ms": r["latency"]["p50_ms"], "artifact": art}

    return measure


def _litert_measure(x: np.ndarray, y: np.ndarray, calib: np.ndarray | None, cfg: Any) -> Measure:
    """TFLite: litert-torch export, ai-edge-quantizer, scored in ai-edge-litert's Interpreter."""
    cache = _Fp32Cache(_tflite_eval.export)

    def measure(model: Any, v: Variant) -> dict[str, Any]:
        art = _tflite_eval.quantize(cache.get(model, x), v.precision, calib,
                                    int8_io=True if v.int8_io is None else v.int8_io,
                                    method=v.calibration_method or "minmax")
        r = _tflite_eval.evaluate(art, x, y, threads=cfg.threads, runs=cfg.latency_runs)
        return {"accuracy": r["accuracy"], "size": r["size"], "size_xz": _transport.measure(art)["xz"],
                "latency_ms": r["latency"]["p50_ms"], "artifact": art}

    return measure


#: target -> factory(eval x, eval y, calibration x, config) -> measure on that target's device runtime
MEASURES: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray | None, Any], Measure]] = {
    "onnx": _ort_measure, "tflite": _litert_measure}


def measure_on_target(x: np.ndarray, y: np.ndarray, calib: np.ndarray | None, cfg: Any) -> Measure:
    calib = None if calib is None else calib[:128]
    per_target: dict[str, Measure] = {}

    def measure(model: Any, v: Variant) -> dict[str, Any]:
        if v.target not in per_target:
            per_target[v.target] = MEASURES[v.target](x, y, calib, cfg)
        return per_target[v.target](model, v)

    return measure
