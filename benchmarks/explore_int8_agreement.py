"""What limits EfficientNet-Lite0's int8 top-1 agreement on the photo crops? (issue 3, item 11)

Measured in one run, on the benchmark's 100 eval crops (10 held-out photos), every figure split
by torch's own top1-top2 softmax margin:

* the **noise ceiling**: how often torch's own top-1 flips when each pixel gets an imperceptible
  uniform +-1/255 perturbation (3 seeds), and the fp16 ONNX artifact's agreement;
* **int8 variants** (ORT QDQ U8S8 per-channel = the pipeline's ``auto`` on this CPU): calibration
  size (64 vs 192 crops of the calibration photos), MinMax vs Percentile, symmetric activations,
  per-tensor weights, QOperator, the stem conv in float, 16-bit activations on the stem's input
  (``TensorQuantOverrides`` ``quant_type=QUInt16``), and the nodes ``--auto-fix`` keeps in float.

    .venv/bin/python benchmarks/explore_int8_agreement.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _effnet_data import (  # noqa: E402
    CALIBRATION_PHOTOS,
    EVAL_PHOTOS,
    IMAGENET_STD,
    crops,
    load_efficientnet_lite0,
    load_photos,
)
from _effnet_onnx import calibration_reader, export_onnx  # noqa: E402
from _measure import ort_runner  # noqa: E402
from bench_efficientnet import MARGIN_BUCKETS, softmax_margin  # noqa: E402


def agreement(ref: np.ndarray, out: np.ndarray, margin: np.ndarray) -> dict[str, object]:
    agree = ref.argmax(1) == out.reshape(ref.shape).argmax(1)
    row: dict[str, object] = {"all": round(float(agree.mean()), 3)}
    for lo, hi in MARGIN_BUCKETS:
        sel = (margin >= lo) & (margin < hi)
        row[f"{lo:.1f}-{min(hi, 1.0):.1f}"] = f"{int(agree[sel].sum())}/{int(sel.sum())}"
    return row


def quantize(prep: str, out: str, calib: np.ndarray, **kw) -> bytes:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    args = {"quant_format": QuantFormat.QDQ, "per_channel": True, "activation_type": QuantType.QUInt8,
            "weight_type": QuantType.QInt8} | kw
    quantize_static(prep, out, calibration_reader(calib), **args)
    return Path(out).read_bytes()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    import onnx
    import torch
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    from converters import _quantize_onnx

    torch.set_num_threads(1)
    model = load_efficientnet_lite0()
    calib = crops(load_photos(CALIBRATION_PHOTOS), per_photo=8, seed=0)
    calib_big = crops(load_photos(CALIBRATION_PHOTOS), per_photo=24, seed=0)
    evals = crops(load_photos(EVAL_PHOTOS), per_photo=10, seed=1)
    with torch.no_grad():
        ref = model(torch.from_numpy(evals)).numpy()
    m = softmax_margin(ref)
    rows: dict[str, dict[str, object]] = {}
    report: dict[str, object] = {"eval_crops": len(evals), "calib_crops": len(calib), "rows": rows,
                                 "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}

    # noise ceiling: +-1/255 uniform per pixel, in the normalized space (divide by the channel's std)
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        noise = rng.uniform(-1 / 255, 1 / 255, evals.shape).astype(np.float32) / IMAGENET_STD[None, :, None, None]
        with torch.no_grad():
            out = model(torch.from_numpy(evals + noise)).numpy()
        rows[f"torch fp32, +-1/255 pixel noise (seed {seed})"] = agreement(ref, out, m)
    print(json.dumps(rows, indent=0), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, os.path.join(tmp, "fp32.onnx"), dynamo=True)
        prep = os.path.join(tmp, "prep.onnx")
        Path(prep).write_bytes(_quantize_onnx.pre_process(Path(fp32).read_bytes(), Path(tmp)))
        fp16 = _quantize_onnx.run(Path(fp32).read_bytes(), _quantize_onnx.OnnxQuantizeConfig(precision="fp16"))
        rows["onnx fp16"] = agreement(ref, ort_runner(fp16, 2)(evals), m) | {"size_mb": round(len(fp16) / 1e6, 2)}
        nodes = onnx.load(prep).graph.node
        stem = next(n for n in nodes if n.op_type == "Conv")
        variants = {
            "int8 per-channel U8S8 MinMax, 64 calib (pipeline default)": {},
            "+ 192 calib crops": {"_calib": calib_big},
            "+ Percentile 99.999": {"calibrate_method": CalibrationMethod.Percentile},
            "+ symmetric activations (S8S8)": {"activation_type": QuantType.QInt8,
                                               "extra_options": {"ActivationSymmetric": True}},
            "per-tensor weights": {"per_channel": False},
            "QOperator": {"quant_format": QuantFormat.QOperator},
            "+ stem conv in float": {"nodes_to_exclude": [stem.name]},
            "+ stem input 16-bit (QUInt16 override)": {"extra_options": {
                "TensorQuantOverrides": {stem.input[0]: [{"quant_type": QuantType.QUInt16}]}}},
            "+ stem in float, 192 calib crops": {"nodes_to_exclude": [stem.name], "_calib": calib_big},
        }
        for label, kw in variants.items():
            t0 = time.perf_counter()
            c = kw.pop("_calib", calib)
            try:
                q = quantize(prep, os.path.join(tmp, "q.onnx"), c, **kw)
            except Exception as e:  # a variant ORT refuses is reported, not hidden
                rows[label] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                continue
            rows[label] = agreement(ref, ort_runner(q, 2)(evals), m) | {
                "size_mb": round(len(q) / 1e6, 3), "quantize_s": round(time.perf_counter() - t0, 1)}
            print(label, rows[label], flush=True)
    report["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    report["margin_buckets"] = {f"{lo:.1f}-{min(hi, 1.0):.1f}": int(((m >= lo) & (m < hi)).sum()) for lo, hi in MARGIN_BUCKETS}
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
