"""Inference backends, one per artifact format, chosen through a registry.

Each backend is imported lazily, inside ``load``: a device with only LiteRT
installed never pays for (or needs) onnxruntime, and ``import runtime`` stays
light. ``register`` maps a format name to its backend (STYLE rule 7).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ._errors import BackendError, BackendUnavailableError

__all__ = ["BACKENDS", "Backend", "BackendOptions", "Session", "register"]


@dataclass(frozen=True)
class BackendOptions:
    """Per-load options shared by every backend."""

    num_threads: int | None = None        # None: the backend's default
    preserve_intermediates: bool = False   # TFLite: keep all tensors (local training reads features)


class Session(Protocol):
    """A loaded artifact. ``run`` takes inputs in manifest order, returns outputs in manifest order."""

    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]: ...


class Backend(Protocol):
    format: str
    module: str

    def load(self, data: bytes, entry: dict[str, Any], options: BackendOptions) -> Session: ...


BACKENDS: dict[str, Backend] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a backend class the handler for artifact format ``name``."""
    def deco(cls: type) -> type:
        inst = cls()
        inst.format = name
        BACKENDS[name] = inst
        return cls
    return deco


def is_available(name: str) -> bool:
    b = BACKENDS.get(name)
    return b is not None and importlib.util.find_spec(b.module.split(".")[0]) is not None


def get_backend(name: str) -> Backend:
    """Raises: BackendUnavailableError if ``name`` is unknown or its package is not installed."""
    if name not in BACKENDS:
        raise BackendUnavailableError(f"no backend registered for format {name!r}",
                                      hint=f"known formats: {sorted(BACKENDS)}")
    if not is_available(name):
        raise BackendUnavailableError(f"the {name} backend needs {BACKENDS[name].module}, which is not installed",
                                      hint=f"pip install the package providing {BACKENDS[name].module}")
    return BACKENDS[name]


def _io_names(entry: dict[str, Any], key: str, actual: list[str], n: int, where: str) -> list[str]:
    names = (entry.get("io_names") or {}).get(key)
    if names is None:
        names = actual[:n]
    if len(names) != n or set(names) - set(actual):
        raise BackendError(f"{where}: artifact {key} {actual} do not match the manifest's {n} {key}",
                           where=where, hint="the io_names in the manifest must name tensors in the file")
    return list(names)


class _OnnxSession:
    def __init__(self, sess: Any, in_names: list[str], out_names: list[str]) -> None:
        self.sess, self.input_names, self.output_names = sess, in_names, out_names
        self._run = sess.run
        self._single = in_names[0] if len(in_names) == 1 else None

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if self._single is not None:
            return self._run(self.output_names, {self._single: inputs[0]})
        return self._run(self.output_names, dict(zip(self.input_names, inputs, strict=False)))


@register("onnx")
class OnnxBackend:
    format = "onnx"
    module = "onnxruntime"

    def load(self, data: bytes, entry: dict[str, Any], options: BackendOptions) -> Session:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if options.num_threads:
            so.intra_op_num_threads = options.num_threads
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(f"onnxruntime cannot load {entry['path']}: {e}", where=entry["path"]) from e
        n_in, n_out = entry["_n_inputs"], entry["_n_outputs"]
        ins = _io_names(entry, "inputs", [i.name for i in sess.get_inputs()], n_in, entry["path"])
        outs = _io_names(entry, "outputs", [o.name for o in sess.get_outputs()], n_out, entry["path"])
        return _OnnxSession(sess, ins, outs)


def _quantize(x: np.ndarray, scale: float, zp: int, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / scale) + zp, info.min, info.max).astype(dtype)


class _LiteRTSession:
    def __init__(self, interp: Any, entry: dict[str, Any]) -> None:
        self.interp = interp
        ins, outs = interp.get_input_details(), interp.get_output_details()
        in_names = _io_names(entry, "inputs", [d["name"] for d in ins], entry["_n_inputs"], entry["path"])
        out_names = _io_names(entry, "outputs", [d["name"] for d in outs], entry["_n_outputs"], entry["path"])
        by_name = {d["name"]: d for d in ins + outs}
        self.input_names, self.output_names = in_names, out_names
        self._in = [by_name[n] for n in in_names]
        self._out_idx = [by_name[n]["index"] for n in out_names]
        quant = entry.get("io_quant") or {}
        self._in_q = quant.get("inputs") or [None] * len(in_names)
        self._out_q = quant.get("outputs") or [None] * len(out_names)
        self._shapes = [tuple(d["shape"]) for d in self._in]
        self._set, self._get, self._invoke = interp.set_tensor, interp.get_tensor, interp.invoke
        self._simple = len(self._in) == 1 and self._in_q[0] is None and not any(q is not None for q in self._out_q)
        self._in0 = self._in[0]["index"]

    def _resize(self, inputs: list[np.ndarray]) -> None:
        for d, x in zip(self._in, inputs, strict=False):
            self.interp.resize_tensor_input(d["index"], list(x.shape))
        self.interp.allocate_tensors()
        self._shapes = [x.shape for x in inputs]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if self._simple:
            # one float input, no (de)quantization: the common case, kept to three native calls
            x = inputs[0]
            if x.shape != self._shapes[0]:
                self._resize(inputs)
            self._set(self._in0, x)
            self._invoke()
            return [self._get(i) for i in self._out_idx]
        if any(x.shape != s for x, s in zip(inputs, self._shapes, strict=False)):
            self._resize(inputs)
        for d, q, x in zip(self._in, self._in_q, inputs, strict=True):
            if q is not None:
                x = _quantize(x, q[0], q[1], d["dtype"])
            self._set(d["index"], x)
        self._invoke()
        outs = [self._get(i) for i in self._out_idx]
        for k, q in enumerate(self._out_q):
            if q is not None:
                outs[k] = ((outs[k].astype(np.float32) - q[1]) * q[0]).astype(np.float32)
        return outs


@register("tflite")
class LiteRTBackend:
    format = "tflite"
    module = "ai_edge_litert"

    def load(self, data: bytes, entry: dict[str, Any], options: BackendOptions) -> Session:
        from ai_edge_litert.interpreter import Interpreter

        try:
            interp = Interpreter(model_content=data, num_threads=options.num_threads,
                                 experimental_preserve_all_tensors=options.preserve_intermediates)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise BackendError(f"LiteRT cannot load {entry['path']}: {e}", where=entry["path"]) from e
        return _LiteRTSession(interp, entry)
