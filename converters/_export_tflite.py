"""Export the source model to fp32 TFLite.

torch: litert-torch (``litert_torch.convert``), traced at batch 1: its JAX
lowering cannot reshape with a symbolic batch (``x.flatten(1)`` fails), so the
artifact is fixed at batch 1 and says so (``fixed_batch``); runtimes loop.
Keras: ``tf.lite.TFLiteConverter.from_keras_model`` (dynamic batch kept).
SavedModel: ``TFLiteConverter.from_saved_model``.
ONNX source: not supported (see ``_onnx_unsupported``).

The Keras converters also do the TFLite quantization in the same call (that
is how TFLiteConverter works), so this module takes the precision too.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._errors import CalibrationRequiredError, UnsupportedError
from ._export_onnx import _raise_export_error
from ._load import LoadedModel
from ._spec import IOSpec

__all__ = ["EXPORTERS", "TfliteExportConfig", "TfliteResult", "run"]


@dataclass(frozen=True)
class TfliteExportConfig:
    precision: str = "fp32"
    int8_io: bool = False
    #: representative samples for full-integer quantization (Keras path)
    calibration: np.ndarray | None = None


@dataclass(frozen=True)
class TfliteResult:
    data: bytes
    fixed_batch: int | None


@contextlib.contextmanager
def _quiet() -> object:
    # litert-torch and TFLiteConverter print pages of progress to stdout; the CLI owns stdout (--json)
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _export_torch(m: LoadedModel, spec: IOSpec, cfg: TfliteExportConfig) -> TfliteResult:
    import litert_torch
    import torch
    litert_torch.config.show_progress = False
    sample = tuple(torch.zeros(t.concrete(1), dtype=getattr(torch, t.dtype)) for t in spec.inputs)
    try:
        with _quiet():
            edge = litert_torch.convert(m.model, sample)
    except Exception as e:  # litert-torch raises JAX/MLIR/export errors; name the op when we can
        _raise_export_error(e, "tflite")
    data = edge.model_content()
    return TfliteResult(bytes(data), 1)


def _keras_converter(m: LoadedModel) -> object:
    import tensorflow as tf
    if m.kind == "saved_model":
        return tf.lite.TFLiteConverter.from_saved_model(str(m.path))
    return tf.lite.TFLiteConverter.from_keras_model(m.model)


def _export_keras(m: LoadedModel, spec: IOSpec, cfg: TfliteExportConfig) -> TfliteResult:
    import tensorflow as tf
    conv = _keras_converter(m)
    if cfg.precision == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif cfg.precision == "int8-dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif cfg.precision == "int8-static":
        if cfg.calibration is None:
            raise CalibrationRequiredError("int8-static needs calibration data", hint="pass --calibration DATA")
        calib = cfg.calibration.astype(np.float32)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if cfg.int8_io:
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
    try:
        with _quiet():
            data = conv.convert()
    except Exception as e:  # TF's converter raises ConverterError naming the op
        _raise_export_error(e, "tflite")
    return TfliteResult(bytes(data), None)


def _onnx_unsupported(m: LoadedModel, spec: IOSpec, cfg: TfliteExportConfig) -> TfliteResult:
    # Why not: the only ONNX->TFLite paths are onnx2tf and onnx-tf. onnx-tf is
    # archived and needs tensorflow-addons (gone for TF >= 2.16); onnx2tf is not
    # installable alongside our pinned stack and checks only fp32 (its #258).
    # Shipping an unchecked path would break the parity promise.
    raise UnsupportedError(
        "an ONNX source cannot be converted to TFLite: there is no maintained ONNX->TFLite converter "
        "that works with this toolchain (onnx-tf is archived; onnx2tf is not part of it)",
        where=m.source, hint="build from the torch or Keras original instead, or use --targets onnx")


#: source kind -> exporter
EXPORTERS: dict[str, Callable[[LoadedModel, IOSpec, TfliteExportConfig], TfliteResult]] = {
    "torch": _export_torch,
    "keras": _export_keras,
    "saved_model": _export_keras,
    "onnx": _onnx_unsupported,
}


def run(model: LoadedModel, spec: IOSpec, config: TfliteExportConfig | None = None) -> TfliteResult:
    """The TFLite bytes for ``model`` (fp32, or quantized for Keras sources).

    Raises:
        UnsupportedOpError, UnsupportedError, CalibrationRequiredError
    """
    cfg = config or TfliteExportConfig()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    fn = EXPORTERS.get(model.kind)
    if fn is None:
        raise UnsupportedError(f"no TFLite exporter for {model.kind} models")
    return fn(model, spec, cfg)
