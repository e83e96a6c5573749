"""Does the ONNX auto-fix finding (the stem conv costs most of the int8 error) carry over to LiteRT?

ai-edge-quantizer ``static_wi8_ai8`` on litert-torch's fp32 EfficientNet-Lite0, calibrated on the
benchmark's 64 calibration crops, once as is and once with the first CONV_2D kept in float
(``update_quantization_recipe(regex=<its output tensor>, algorithm_key=NO_QUANTIZE)``). Top-1
agreement with torch on the 100 held-out crops. Figures: benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/explore_tflite_float_stem.py
"""

from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _effnet_data import (  # noqa: E402
    CALIBRATION_PHOTOS,
    EVAL_PHOTOS,
    crops,
    load_efficientnet_lite0,
    load_photos,
)
from _effnet_tflite import convert_fp32  # noqa: E402
from _measure import litert_runner  # noqa: E402


def first_conv_output(fp32: bytes) -> str:
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(fp32, 0))
    sg = m.subgraphs[0]
    ops = {v: k for k, v in schema.BuiltinOperator.__dict__.items() if not k.startswith("_")}
    for op in sg.operators:
        code = m.operatorCodes[op.opcodeIndex]
        if ops.get(max(code.builtinCode, code.deprecatedBuiltinCode)) == "CONV_2D":
            return sg.tensors[op.outputs[0]].name.decode()
    raise SystemExit("no CONV_2D in the model")


def main() -> int:
    import torch
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    torch.set_num_threads(1)
    model = load_efficientnet_lite0()
    calib = crops(load_photos(CALIBRATION_PHOTOS), per_photo=8, seed=0)
    evals = crops(load_photos(EVAL_PHOTOS), per_photo=10, seed=1)
    with torch.no_grad():
        ref = model(torch.from_numpy(evals)).numpy()
    fp32 = convert_fp32(model)
    stem = first_conv_output(fp32)
    sigs = Interpreter(model_content=fp32).get_signature_list()
    sig = next(iter(sigs))
    name = sigs[sig]["inputs"][0]
    for label, regex in (("static_wi8_ai8", None), (f"+ stem conv ({stem}) in float", re.escape(stem))):
        q = quantizer.Quantizer(bytearray(fp32), recipe.static_wi8_ai8())
        if regex:
            q.update_quantization_recipe(regex=regex, operation_name="*", algorithm_key=AlgorithmName.NO_QUANTIZE)
        cal = q.calibrate({sig: [{name: calib[i : i + 1]} for i in range(len(calib))]}, num_threads=1)
        out = bytes(q.quantize(cal, enable_progress_report=False).quantized_model)
        agree = float((litert_runner(out, 1)(evals).argmax(1) == ref.argmax(1)).mean())
        print(f"{label:60s} size={len(out):,d} B top1={agree:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
