"""ONNX export and ORT static-int8 variants for the EfficientNet benchmarks.

This is the benchmark's own plumbing for the *measurement* of every variant
(``explore_int8_variants.py``) and its fallback build path when
``converters.build`` is not usable; the settings it recommends come from
``converters._cpu.recommend_ort_int8``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["OrtInt8Variant", "export_onnx", "quantize_onnx"]


def export_onnx(model, path: str, *, dynamo: bool, opset: int = 18) -> str:
    """Export ``model`` to ``path`` with a dynamic batch dimension; returns ``path``."""
    import torch

    x = torch.zeros(1, 3, 224, 224)
    tmp = path + ".tmp"
    with torch.no_grad():
        if dynamo:
            prog = torch.onnx.export(
                model,
                (x,),
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},),
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
            prog.save(tmp)
        else:
            torch.onnx.export(
                model,
                (x,),
                tmp,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class OrtInt8Variant:
    """One point in the ORT ``quantize_static`` option space."""

    quant_format: str = "QDQ"  # or "QOperator"
    activation_type: str = "int8"  # ORT's default is QInt8 for both
    weight_type: str = "int8"
    per_channel: bool = False
    reduce_range: bool = False
    calibrate_method: str = "MinMax"  # or "Entropy", "Percentile"
    pre_process: bool = False
    #: keep the stem Conv (the one reading the image) in float: measured 0.81 -> 0.93 top-1
    #: agreement on EfficientNet-Lite0 at +2 kB (see RESULTS.md)
    float_stem: bool = False

    @property
    def label(self) -> str:
        a = "U8" if self.activation_type == "uint8" else "S8"
        w = "U8" if self.weight_type == "uint8" else "S8"
        bits = [self.quant_format, a + w]
        bits += ["perch"] if self.per_channel else []
        bits += ["rr"] if self.reduce_range else []
        bits += [self.calibrate_method] if self.calibrate_method != "MinMax" else []
        bits += ["prep"] if self.pre_process else []
        bits += ["stem-fp32"] if self.float_stem else []
        return "-".join(bits)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def calibration_reader(calib: np.ndarray):
    """ORT's calibration reader over ``calib`` (NCHW float32), one image per batch, input name ``input``."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib[i : i + 1] for i in range(len(calib)))

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"input": x}

    return Reader()


def quantize_onnx(fp32_path: str, out_path: str, variant: OrtInt8Variant, calib: np.ndarray) -> str:
    """Quantize ``fp32_path`` with ``variant`` calibrated on ``calib`` (NCHW float32)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    with tempfile.TemporaryDirectory() as tmp:
        src = fp32_path
        if variant.pre_process:
            src = os.path.join(tmp, "prep.onnx")
            quant_pre_process(fp32_path, src, skip_symbolic_shape=False)
        exclude = None
        if variant.float_stem:
            exclude = [next(n.name for n in onnx.load(src).graph.node if n.op_type == "Conv")]
        quantize_static(
            src,
            out_path + ".tmp",
            calibration_reader(calib),
            quant_format=getattr(QuantFormat, variant.quant_format),
            per_channel=variant.per_channel,
            reduce_range=variant.reduce_range,
            activation_type=qtype[variant.activation_type],
            weight_type=qtype[variant.weight_type],
            calibrate_method=getattr(CalibrationMethod, variant.calibrate_method),
            nodes_to_exclude=exclude,
        )
    os.replace(out_path + ".tmp", out_path)
    return out_path
