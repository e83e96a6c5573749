"""Produce every (target, precision) artifact by composing the export and
quantize passes. A registry maps the target to its producer (STYLE rule 7)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import _export_onnx, _export_tflite, _onnx_compact, _quantize_onnx, _quantize_tflite
from ._load import LoadedModel
from ._recipe import Recipe
from ._spec import IOSpec

__all__ = ["FILE_TAGS", "PRODUCERS", "Artifact"]

#: precision -> the tag in the file name (artifacts/<name>.<tag>.<ext>; the contract's example is digits.int8.onnx)
FILE_TAGS = {"fp32": "fp32", "fp16": "fp16", "int8-static": "int8", "int8-dynamic": "int8-dynamic"}
EXTENSIONS = {"onnx": "onnx", "tflite": "tflite"}


@dataclass
class Artifact:
    name: str
    format: str
    precision: str
    data: bytes
    #: extra manifest fields (io_names, io_quant, fixed_batch, excluded_nodes, ...)
    extra: dict[str, Any] = field(default_factory=dict)
    #: for int8-static ONNX: the pre-processed float graph that was quantized (localization needs it)
    float_graph: bytes | None = None
    notes: list[str] = field(default_factory=list)
    #: for int8-static ONNX: ORT's calibration cache (JSON tensor ranges), reused by --auto-fix
    calibration_cache: bytes | None = None


def artifact_name(model: str, fmt: str, precision: str) -> str:
    return f"{model}.{FILE_TAGS[precision]}.{EXTENSIONS[fmt]}"


def onnx_input_name(data: bytes) -> str:
    """The first graph input's name inside an ONNX file (exporters may rename it)."""
    import onnx
    g = onnx.load_from_string(data).graph
    inits = {i.name for i in g.initializer}
    return next(i.name for i in g.input if i.name not in inits)


def onnx_quant_config(recipe: Recipe, fp32: bytes, precision: str, calib: np.ndarray | None,
                      exclude: tuple[str, ...] = ()) -> _quantize_onnx.OnnxQuantizeConfig:
    o = recipe.onnx
    return _quantize_onnx.OnnxQuantizeConfig(
        precision=precision, calibration=calib, input_name=onnx_input_name(fp32),
        calibration_method=o.calibration_method, per_channel=o.per_channel, pre_process=o.pre_process,
        activation_type=o.activation_type, quant_format=o.quant_format, reduce_range=o.reduce_range,
        nodes_to_exclude=tuple(dict.fromkeys((*o.nodes_to_exclude, *exclude))), compact=o.compact,
    )


def _produce_onnx(m: LoadedModel, spec: IOSpec, recipe: Recipe, precisions: tuple[str, ...],
                  calib: np.ndarray | None) -> list[Artifact]:
    fp32 = _export_onnx.run(m, spec, _export_onnx.OnnxExportConfig(opset=recipe.onnx.opset))
    if recipe.onnx.compact:
        fp32 = _onnx_compact.run(fp32)  # drops the exporter's debug metadata (stack traces with local paths)
    out = []
    for p in precisions:
        extra: dict[str, Any] = {}
        float_graph = None
        cache = None
        if p == "fp32":
            data = fp32
        elif p == "int8-static":
            # pre-process once: the same graph is quantized and kept for localization, and the
            # calibrated ranges are kept so --auto-fix re-quantizes without calibrating again
            float_graph = _preprocessed(fp32) if recipe.onnx.pre_process else fp32
            with tempfile.TemporaryDirectory() as d:
                cfg = replace(onnx_quant_config(recipe, fp32, p, calib), pre_process=False,
                              calibration_cache=str(Path(d) / "calibration.json"))
                data = _quantize_onnx.run(float_graph, cfg)
                cache = Path(cfg.calibration_cache).read_bytes() if Path(cfg.calibration_cache).exists() else None
            extra["int8_settings"] = {k: v for k, v in _quantize_onnx.int8_settings(cfg).items()}
            if cfg.nodes_to_exclude:
                extra["nodes_kept_in_float"] = list(cfg.nodes_to_exclude)
        else:
            data = _quantize_onnx.run(fp32, onnx_quant_config(recipe, fp32, p, calib))
        out.append(Artifact(artifact_name(recipe.model.name, "onnx", p), "onnx", p, data, extra, float_graph,
                            calibration_cache=cache))
    return out


def _preprocessed(data: bytes) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return _quantize_onnx.pre_process(data, Path(d))


def _produce_tflite(m: LoadedModel, spec: IOSpec, recipe: Recipe, precisions: tuple[str, ...],
                    calib: np.ndarray | None) -> list[Artifact]:
    out = []
    fp32: _export_tflite.TfliteResult | None = None
    for p in precisions:
        if m.kind == "torch":
            # litert-torch converts once; ai-edge-quantizer quantizes the flatbuffer
            fp32 = fp32 or _export_tflite.run(m, spec)
            data = fp32.data if p == "fp32" else _quantize_tflite.run(
                fp32.data, _quantize_tflite.TfliteQuantizeConfig(
                    precision=p, calibration=calib, int8_io=recipe.tflite.int8_io is not False,
                    calibration_method=recipe.tflite.calibration_method))
            fixed = fp32.fixed_batch
        else:
            res = _export_tflite.run(m, spec, _export_tflite.TfliteExportConfig(
                precision=p, int8_io=bool(recipe.tflite.int8_io), calibration=calib))
            data, fixed = res.data, res.fixed_batch
        extra: dict[str, Any] = {}
        if fixed:
            extra["fixed_batch"] = fixed
        out.append(Artifact(artifact_name(recipe.model.name, "tflite", p), "tflite", p, data, extra))
    return out


#: target -> producer(model, spec, recipe, precisions, calibration) -> artifacts
PRODUCERS: dict[str, Callable[[LoadedModel, IOSpec, Recipe, tuple[str, ...], np.ndarray | None], list[Artifact]]] = {
    "onnx": _produce_onnx,
    "tflite": _produce_tflite,
}
