"""edgepack's side of the EfficientNet benchmark: ``converters.build`` or the own path.

``build_with_converters`` runs the real pipeline (ONNX + TFLite, fp32 + int8-static)
and reads the artifacts back out of the bundle it wrote. The int8 parity budget is
switched off *for this call only*, because the benchmark measures and reports the
agreement itself against the issue's 99 % target; with the default budget the
pipeline would (correctly) refuse to write the bundle and there would be nothing to time.

``build_with_own_path`` is the fallback when the pipeline is not usable: the same
tools with the settings ``converters._cpu.recommend_ort_int8`` gives for this CPU.
"""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import numpy as np
from _effnet_onnx import OrtInt8Variant, export_onnx, quantize_onnx
from _effnet_tflite import convert_fp32, convert_int8_aeq

__all__ = ["build_tuned_onnx_int8", "build_with_converters", "build_with_own_path"]

_RUNTIME = {"onnx": "onnxruntime", "tflite": "litert"}


def _autofix_summary(report: dict) -> dict:
    """What localization and ``--auto-fix`` did for the int8 ONNX artifact, and what it cost."""
    row = next((a for a in report.get("artifacts", []) if a["name"].endswith(".int8.onnx")), {})
    loc, fix = row.get("localization") or {}, row.get("auto_fix") or {}
    return {"first_diverging": (loc.get("first_diverging") or {}).get("node"),
            "worst": [(w["node"], w["op_type"], round(w["gain_db"], 2)) for w in loc.get("worst", [])],
            "sensitivity": loc.get("sensitivity"), "kept_in_float": fix.get("kept_in_float"),
            "passed": fix.get("passed"), "tries": len(fix.get("tries", [])), "auto_fix_s": fix.get("seconds")}


def build_with_converters(model, calib: np.ndarray, select: np.ndarray, tmp: str, auto_fix: bool = True,
                          retry: bool = True) -> tuple[dict | None, float, str, dict]:
    """Returns (artifacts, seconds, description, auto-fix summary); artifacts is None with the reason
    when it fails.

    ``select``: the pipeline's eval data, which localization and ``--auto-fix`` select nodes on:
    fresh crops of the CALIBRATION photos, so the benchmark's agreement (on other photos) is held out.
    The int8 budget is the issue's top-1 >= 99 %: the pipeline localizes and auto-fixes towards it;
    when it still fails, the build is re-run once with the nodes auto-fix kept in float pinned and
    the int8 budget off (the benchmark checks the issue's targets itself); the summary says so and
    times both builds.
    """
    try:
        import converters
    except ImportError as e:
        return None, 0.0, f"import failed: {e}", {}
    recipe = {
        "model": {"name": "efficientnet-lite0"},
        "build": {"targets": ["onnx", "tflite"], "precisions": ["fp32", "int8-static"], "auto_fix": auto_fix},
        # auto-fix works towards the issue's own target (top-1 >= 99 %) on the selection crops, so it
        # runs to its limits ([localize] max_excluded / max_tries) and keeps the best result
        "parity": {"int8-static": {"min_top1_agreement": 0.99}},
    }
    t0 = time.perf_counter()
    fix: dict = {}
    try:
        try:
            result = converters.build(model, recipe, out=os.path.join(tmp, "edgepack-out"),
                                      calibration=calib, eval_data=select)
        except converters.ParityFailedError as e:
            # a failed build writes no bundle: re-build once with the nodes auto-fix kept in float
            # pinned ([onnx] nodes_to_exclude, no search) and the int8 budget off, to get the bytes
            fix = {"budget": "FAILED: " + e.message.replace("\n", "; ")[:400],
                   "build_with_auto_fix_s": round(time.perf_counter() - t0, 1)} | _autofix_summary(e.report)
            if not retry:
                return None, time.perf_counter() - t0, "converters.build failed its int8 budget (no retry)", fix
            t0 = time.perf_counter()
            recipe["build"]["auto_fix"] = False
            recipe["onnx"] = {"nodes_to_exclude": fix.get("kept_in_float") or []}
            recipe["parity"] = {"int8-static": {"min_cosine": 0.0, "min_top1_agreement": 0.0, "max_accuracy_drop": 1.0}}
            result = converters.build(model, recipe, out=os.path.join(tmp, "edgepack-out2"),
                                      calibration=calib, eval_data=select)
            fix["pinned_build_s"] = round(time.perf_counter() - t0, 1)
    except Exception as e:  # the benchmark reports why and falls back; it never hides it
        return None, 0.0, f"converters.build raised {type(e).__name__}: {str(e)[:300]}", fix
    seconds = time.perf_counter() - t0
    fix = fix or ({"budget": "passed"} | _autofix_summary(result.report))
    arts = {}
    with zipfile.ZipFile(result.bundle) as z:
        for name in z.namelist():
            if not name.startswith("artifacts/"):
                continue
            base = os.path.basename(name)
            fmt = base.rsplit(".", 1)[-1]
            precision = "fp32" if ".fp32." in base else "int8" if "int8" in base or "i8" in base else None
            if precision is None or fmt not in _RUNTIME:
                continue
            arts[f"edgepack {fmt} {precision}"] = {"runtime": _RUNTIME[fmt], "bytes": z.read(name),
                                                  "build_s": seconds, "precision": precision, "file": base}
    how = ("converters.build (ONNX + TFLite, fp32 + int8-static, settings 'auto' from converters._cpu"
           + (", --auto-fix)" if auto_fix else ")"))
    return arts, seconds, how, fix


def build_with_own_path(model, calib: np.ndarray, tmp: str, rec) -> tuple[dict, float, str]:
    """fp32 + int8 for both targets with the per-CPU recommendation; returns (artifacts, seconds, description)."""
    arts: dict[str, dict] = {}
    start = time.perf_counter()
    t0 = time.perf_counter()
    fp32 = export_onnx(model, os.path.join(tmp, "edge.fp32.onnx"), dynamo=True)
    arts["edgepack onnx fp32"] = {"runtime": "onnxruntime", "bytes": Path(fp32).read_bytes(),
                                  "build_s": time.perf_counter() - t0, "precision": "fp32"}
    t0 = time.perf_counter()
    var = OrtInt8Variant(rec.quant_format, rec.activation_type, rec.weight_type, rec.per_channel, rec.reduce_range,
                         "MinMax", pre_process=True)
    q = quantize_onnx(fp32, os.path.join(tmp, "edge.int8.onnx"), var, calib)
    arts["edgepack onnx int8"] = {"runtime": "onnxruntime", "bytes": Path(q).read_bytes(),
                                  "build_s": time.perf_counter() - t0, "precision": "int8", "settings": var.label}
    t0 = time.perf_counter()
    tfl = convert_fp32(model)
    arts["edgepack tflite fp32"] = {"runtime": "litert", "bytes": tfl, "build_s": time.perf_counter() - t0,
                                    "precision": "fp32"}
    t0 = time.perf_counter()
    arts["edgepack tflite int8"] = {"runtime": "litert", "bytes": convert_int8_aeq(tfl, calib),
                                    "build_s": time.perf_counter() - t0, "precision": "int8",
                                    "settings": "ai-edge-quantizer static_wi8_ai8 (per-channel weights)"}
    return arts, time.perf_counter() - start, f"own path ({var.label}; TFLite int8 via ai-edge-quantizer)"


def build_tuned_onnx_int8(model, calib: np.ndarray, tmp: str, rec) -> dict[str, dict]:
    """fp32 + int8 ONNX with the CPU recommendation *and* the stem conv kept in float.

    Not what ``converters.build`` does by default; shown to measure what one excluded
    node buys (the pipeline's ``--auto-fix`` is the general form of this).
    """
    t0 = time.perf_counter()
    fp32 = export_onnx(model, os.path.join(tmp, "tuned.fp32.onnx"), dynamo=True)
    var = OrtInt8Variant(rec.quant_format, rec.activation_type, rec.weight_type, rec.per_channel, rec.reduce_range,
                         "MinMax", pre_process=True, float_stem=True)
    q = quantize_onnx(fp32, os.path.join(tmp, "tuned.int8.onnx"), var, calib)
    return {"tuned onnx int8": {"runtime": "onnxruntime", "bytes": Path(q).read_bytes(), "precision": "int8",
                                "build_s": time.perf_counter() - t0, "settings": var.label}}
