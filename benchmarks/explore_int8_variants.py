"""Sweep ORT static-int8 settings on EfficientNet-Lite0 and measure each one.

This is the measurement behind ``converters._cpu.recommend_ort_int8`` and the
table in ``docs/perf-guardrail.md``: for each export path (dynamo / legacy) and
each quantization setting it records size, quantize time, top-1 agreement with
torch on held-out photo crops, and batch-1 latency (1 and 2 threads), with the
fp32 model timed interleaved in the same rounds as the reference.

    .venv/bin/python benchmarks/explore_int8_variants.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


from _effnet_data import (  # noqa: E402
    CALIBRATION_PHOTOS,
    EVAL_PHOTOS,
    crops,
    load_efficientnet_lite0,
    load_photos,
)
from _effnet_onnx import OrtInt8Variant, export_onnx, quantize_onnx  # noqa: E402
from _measure import measure_interleaved, ort_runner, parity  # noqa: E402

_TYPES = {"U8U8": ("uint8", "uint8"), "U8S8": ("uint8", "int8"), "S8S8": ("int8", "int8")}


def variants(quick: bool) -> list[tuple[str, OrtInt8Variant]]:
    """The grid: signedness x format on both exports, then one-knob changes around the grid."""
    out: list[tuple[str, OrtInt8Variant]] = []
    exports = ["legacy"] if quick else ["dynamo", "legacy"]
    for exp in exports:
        for fmt in ("QDQ", "QOperator"):
            for act, wt in _TYPES.values():
                out.append((exp, OrtInt8Variant(quant_format=fmt, activation_type=act, weight_type=wt)))
    if quick:
        return out
    for exp in exports:
        for act, wt in (_TYPES["U8S8"], _TYPES["S8S8"]):
            base = {"quant_format": "QDQ", "activation_type": act, "weight_type": wt}
            out.append((exp, OrtInt8Variant(**base, per_channel=True)))
            out.append((exp, OrtInt8Variant(**base, reduce_range=True)))
            out.append((exp, OrtInt8Variant(**base, per_channel=True, reduce_range=True)))
            out.append((exp, OrtInt8Variant(**base, pre_process=True)))
    for method in ("Entropy", "Percentile"):
        out.append(("dynamo", OrtInt8Variant("QDQ", "uint8", "int8", per_channel=True, calibrate_method=method)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="legacy export, 6 variants, fewer crops/runs")
    ap.add_argument("--json", metavar="PATH", help="write all figures as JSON here")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per variant and thread count")
    args = ap.parse_args(argv)
    runs = args.runs or (30 if args.quick else 100)

    import torch

    torch.set_num_threads(1)  # keep the shared machine usable while we calibrate
    model = load_efficientnet_lite0()
    calib = crops(load_photos(CALIBRATION_PHOTOS), per_photo=4, seed=0)
    evals = crops(load_photos(EVAL_PHOTOS), per_photo=4 if args.quick else 10, seed=1)
    with torch.no_grad():
        ref = model(torch.from_numpy(evals)).numpy()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = {}
        for exp in sorted({e for e, _ in variants(args.quick)}):
            fp32[exp] = export_onnx(model, os.path.join(tmp, f"{exp}.fp32.onnx"), dynamo=exp == "dynamo")
        for exp, var in variants(args.quick):
            path = os.path.join(tmp, f"{exp}.{var.label}.onnx")
            t0 = time.perf_counter()
            try:
                quantize_onnx(fp32[exp], path, var, calib)
            except Exception as e:  # a variant ORT refuses is a result too
                rows.append({"export": exp, "variant": var.label, "error": f"{type(e).__name__}: {e}"[:300]})
                print(f"{exp:7s} {var.label:28s} FAILED {e}", flush=True)
                continue
            qtime = time.perf_counter() - t0
            row = {"export": exp, "variant": var.label, "config": var.to_dict(), "quantize_s": round(qtime, 1)}
            row["size_bytes"] = os.path.getsize(path)
            row["fp32_size_bytes"] = os.path.getsize(fp32[exp])
            row.update(parity(ref, ort_runner(path, 2)(evals)))
            for threads in (1, 2):
                lat = measure_interleaved(
                    {"fp32": ort_runner(fp32[exp], threads), "int8": ort_runner(path, threads)}, evals, runs
                )
                row[f"t{threads}"] = {k: v.to_dict() for k, v in lat.items()}
                row[f"t{threads}_speedup_p50"] = round(lat["fp32"].p50_ms / lat["int8"].p50_ms, 2)
            rows.append(row)
            print(
                f"{exp:7s} {var.label:28s} top1={row['top1_agreement']:.3f} "
                f"t1 {row['t1']['fp32']['p50_ms']:.1f}->{row['t1']['int8']['p50_ms']:.1f}ms "
                f"(x{row['t1_speedup_p50']}) t2 x{row['t2_speedup_p50']} q={qtime:.0f}s",
                flush=True,
            )
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"eval_crops": len(evals), "calib_crops": len(calib), "runs": runs, "rows": rows}, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
