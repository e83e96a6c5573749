"""Which nodes kept in float buy back EfficientNet-Lite0's int8 top-1 agreement?

QDQ U8S8 per-channel (the VNNI recommendation from ``converters._cpu``), calibrated on
64 photo crops, evaluated on 100 crops of other photos; each row keeps one group of
nodes in float via ``nodes_to_exclude``. Agreement is also split by how confident the
original model was (top1 - top2 softmax margin). Figures: docs/perf-guardrail.md.

    .venv/bin/python benchmarks/explore_excluded_nodes.py
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _effnet_data import (  # noqa: E402
    CALIBRATION_PHOTOS,
    EVAL_PHOTOS,
    crops,
    load_efficientnet_lite0,
    load_photos,
)
from _effnet_onnx import export_onnx  # noqa: E402
from _measure import ort_runner, parity  # noqa: E402
from bench_efficientnet import confidence_breakdown  # noqa: E402


def main() -> int:
    import onnx
    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    torch.set_num_threads(1)
    model = load_efficientnet_lite0()
    calib = crops(load_photos(CALIBRATION_PHOTOS), per_photo=8, seed=0)
    evals = crops(load_photos(EVAL_PHOTOS), per_photo=10, seed=1)
    with torch.no_grad():
        ref = model(torch.from_numpy(evals)).numpy()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib[i : i + 1] for i in range(len(calib)))

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"input": x}

    with tempfile.TemporaryDirectory() as tmp:
        prep = os.path.join(tmp, "prep.onnx")
        quant_pre_process(export_onnx(model, os.path.join(tmp, "fp32.onnx"), dynamo=True), prep)
        nodes = onnx.load(prep).graph.node
        convs = [n.name for n in nodes if n.op_type == "Conv"]
        depthwise = [n.name for n in nodes if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
        linear = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
        groups = {"none": [], "stem conv": convs[:1], "final linear": linear, "stem + linear": convs[:1] + linear,
                  f"{len(depthwise)} depthwise convs": depthwise}
        for label, exclude in groups.items():
            out = os.path.join(tmp, "q.onnx")
            quantize_static(prep, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
            y = ort_runner(out, 1)(evals)
            p = parity(ref, y)
            print(f"{label:22s} size={os.path.getsize(out) / 1e6:.2f}MB top1={p['top1_agreement']:.2f} "
                  f"max_abs={p['max_abs']:.2f} by_confidence={confidence_breakdown(ref, y)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
