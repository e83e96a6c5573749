"""EfficientNet-Lite0 (real ImageNet weights): edgepack's build vs the plain tools, in one run.

Side by side on the same photo crops and in the same process:
  * torch eager (the original; the reference for every parity figure),
  * plain ORT: ``torch.onnx.export(dynamo=True)`` + ``quantize_static`` with its DEFAULTS,
  * plain LiteRT: ``litert_torch.convert`` defaults (fp32) and its default PT2E int8 config,
  * edgepack: ``converters.build`` with ``--auto-fix`` (nodes selected on other crops of the
    calibration photos) when it works, else the benchmark's own path using
    ``converters._cpu.recommend_ort_int8`` (the run says which one was used).
Per artifact: size (and a byte breakdown by role), build time, parity vs torch, and batch-1
latency p50/p95 at 1 and 2 threads in the device runtimes (onnxruntime, ai-edge-litert), timed
interleaved; plus the noise ceiling (torch vs itself under +-1/255 pixel noise).

    .venv/bin/python benchmarks/bench_efficientnet.py [--quick] [--json out.json] [--no-edgepack-build] [--no-auto-fix]
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
from _effnet_bytes import onnx_breakdown, tflite_breakdown  # noqa: E402
from _effnet_data import (  # noqa: E402
    CALIBRATION_PHOTOS,
    EVAL_PHOTOS,
    IMAGENET_STD,
    crops,
    load_efficientnet_lite0,
    load_photos,
)
from _effnet_edgepack import build_tuned_onnx_int8, build_with_converters, build_with_own_path  # noqa: E402
from _effnet_onnx import OrtInt8Variant, export_onnx, quantize_onnx  # noqa: E402
from _effnet_tflite import convert_fp32, convert_int8_pt2e  # noqa: E402
from _measure import litert_runner, measure_interleaved, ort_runner, parity  # noqa: E402

TARGETS = {"size_ratio": 3.8, "top1": 0.99, "fp32_max_abs": 1e-4, "build_s": 120.0}


def plain_tools(model, calib: np.ndarray, tmp: str) -> dict[str, dict]:
    """The baselines: each tool with its own defaults."""
    arts: dict[str, dict] = {}
    t0 = time.perf_counter()
    fp32 = export_onnx(model, os.path.join(tmp, "plain.fp32.onnx"), dynamo=True)
    arts["ort-default fp32"] = {"runtime": "onnxruntime", "bytes": Path(fp32).read_bytes(),
                                "build_s": time.perf_counter() - t0, "precision": "fp32"}
    t0 = time.perf_counter()
    q = quantize_onnx(fp32, os.path.join(tmp, "plain.int8.onnx"), OrtInt8Variant(), calib)
    arts["ort-default int8"] = {"runtime": "onnxruntime", "bytes": Path(q).read_bytes(),
                                "build_s": time.perf_counter() - t0, "precision": "int8",
                                "settings": "quantize_static defaults: QDQ, S8S8, per-tensor, MinMax"}
    t0 = time.perf_counter()
    arts["litert-default fp32"] = {"runtime": "litert", "bytes": convert_fp32(model),
                                   "build_s": time.perf_counter() - t0, "precision": "fp32"}
    t0 = time.perf_counter()
    arts["litert-default int8"] = {"runtime": "litert", "bytes": convert_int8_pt2e(model, calib, per_channel=False),
                                   "build_s": time.perf_counter() - t0, "precision": "int8",
                                   "settings": "PT2EQuantizer get_symmetric_quantization_config() defaults"}
    return arts


MARGIN_BUCKETS = ((0.0, 0.1), (0.1, 0.3), (0.3, 1.01))


def softmax_margin(ref: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 softmax probability per row: how sure the original model was."""
    z = ref - ref.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    top = np.sort(p, 1)[:, ::-1]
    return top[:, 0] - top[:, 1]


def confidence_breakdown(ref: np.ndarray, out: np.ndarray) -> dict[str, object]:
    """Top-1 agreement split by how sure the original was: shows where int8 flips answers."""
    margin = softmax_margin(ref)
    agree = ref.argmax(1) == out.reshape(ref.shape).argmax(1)
    rows = {}
    for lo, hi in MARGIN_BUCKETS:
        sel = (margin >= lo) & (margin < hi)
        rows[f"margin {lo:.1f}-{min(hi, 1.0):.1f}"] = {"n": int(sel.sum()),
                                                      "agreement": float(agree[sel].mean()) if sel.any() else None}
    return rows


def noise_ceiling(model, evals: np.ndarray, ref: np.ndarray, seed: int = 100) -> dict[str, object]:
    """Torch's own top-1 agreement with itself when every pixel moves by up to +-1/255."""
    import torch

    rng = np.random.default_rng(seed)
    noise = rng.uniform(-1 / 255, 1 / 255, evals.shape).astype(np.float32) / IMAGENET_STD[None, :, None, None]
    with torch.no_grad():
        out = model(torch.from_numpy(evals + noise)).numpy()
    return {"top1_agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
            "by_confidence": confidence_breakdown(ref, out)}


def run_latency(arts: dict[str, dict], evals: np.ndarray, runs: int) -> None:
    for runtime, make in (("onnxruntime", ort_runner), ("litert", litert_runner)):
        names = [k for k, a in arts.items() if a["runtime"] == runtime]
        for threads in (1, 2):
            lat = measure_interleaved({k: make(arts[k]["bytes"], threads) for k in names}, evals, runs)
            for k, v in lat.items():
                arts[k][f"latency_t{threads}"] = v.to_dict()


def torch_latency(model, evals: np.ndarray, runs: int) -> dict[str, dict]:
    import torch

    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with torch.no_grad():
            lat = measure_interleaved({"torch": lambda x: model(torch.from_numpy(x))}, evals, runs)
        out[f"latency_t{threads}"] = lat["torch"].to_dict()
    torch.set_num_threads(1)
    return out


def check_targets(arts: dict[str, dict], build_s: float, prefix: str) -> list[dict[str, object]]:
    """The issue's targets, each with its measured figure and pass/fail."""
    res = []
    for rt in ("onnxruntime", "litert"):
        f = next((a for k, a in arts.items() if k.startswith(prefix) and a["runtime"] == rt and a["precision"] == "fp32"), None)
        q = next((a for k, a in arts.items() if k.startswith(prefix) and a["runtime"] == rt and a["precision"] == "int8"), None)
        if f is None or q is None:
            res.append({"target": f"{rt}: artifacts", "passed": False, "measured": "missing"})
            continue
        ratio = len(f["bytes"]) / len(q["bytes"])
        res.append({"target": f"{rt}: int8 >= 3.8x smaller", "measured": round(ratio, 2), "passed": ratio >= TARGETS["size_ratio"]})
        for t in (1, 2):
            fr, qr = f[f"latency_t{t}"]["p50_ms"], q[f"latency_t{t}"]["p50_ms"]
            res.append({"target": f"{rt}: int8 p50 <= fp32 p50 ({t} thr)", "measured": f"{qr:.2f} vs {fr:.2f} ms",
                        "passed": qr <= fr})
        res.append({"target": f"{rt}: int8 top-1 >= 99%", "measured": round(q["top1_agreement"], 3),
                    "passed": q["top1_agreement"] >= TARGETS["top1"]})
        res.append({"target": f"{rt}: fp32 max abs <= 1e-4", "measured": f"{f['max_abs']:.2e}",
                    "passed": f["max_abs"] <= TARGETS["fp32_max_abs"]})
    res.append({"target": "whole build < 120 s", "measured": round(build_s, 1), "passed": build_s < TARGETS["build_s"]})
    return res


def print_table(arts: dict[str, dict], torch_row: dict) -> None:
    hdr = f"{'artifact':26s} {'size MB':>8s} {'build s':>8s} {'p50/p95 1thr ms':>16s} {'p50/p95 2thr ms':>16s} {'max abs':>9s} {'top1':>6s}"
    print(hdr)
    t1, t2 = torch_row["latency_t1"], torch_row["latency_t2"]
    print(f"{'torch eager':26s} {'':>8s} {'':>8s} {t1['p50_ms']:7.2f}/{t1['p95_ms']:<8.2f} {t2['p50_ms']:7.2f}/{t2['p95_ms']:<8.2f}")
    for k, a in arts.items():
        l1, l2 = a["latency_t1"], a["latency_t2"]
        print(f"{k:26s} {len(a['bytes']) / 1e6:8.2f} {a['build_s']:8.1f} {l1['p50_ms']:7.2f}/{l1['p95_ms']:<8.2f} "
              f"{l2['p50_ms']:7.2f}/{l2['p95_ms']:<8.2f} {a['max_abs']:9.2e} {a['top1_agreement']:6.3f}")


def time_builds(model, calib: np.ndarray, select: np.ndarray, json_path: str | None) -> int:
    """The whole-build target alone: converters.build with and without --auto-fix, back to back."""
    rows = []
    for auto_fix in (True, False):
        load = Path("/proc/loadavg").read_text().split()[:3]
        with tempfile.TemporaryDirectory() as tmp:
            _, seconds, how, fix = build_with_converters(model, calib, select, tmp, auto_fix=auto_fix, retry=False)
        rows.append({"auto_fix": auto_fix, "build_s": round(seconds, 1),
                     "loadavg_before": load, "how": how} | {k: fix.get(k) for k in
                     ("kept_in_float", "auto_fix_s", "sensitivity", "tries", "pinned_build_s")})
        print(json.dumps(rows[-1], default=str), flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=1, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer crops and timed runs (smoke run, ~4 min)")
    ap.add_argument("--json", metavar="PATH", help="also write every figure as JSON here")
    ap.add_argument("--no-edgepack-build", action="store_true", help="skip converters.build; use the own path")
    ap.add_argument("--no-auto-fix", action="store_true", help="build without --auto-fix")
    ap.add_argument("--build-only", action="store_true",
                    help="only time converters.build (with and without --auto-fix, back to back) and exit")
    args = ap.parse_args(argv)
    runs = 30 if args.quick else 100

    import torch

    from converters._cpu import detect_cpu, recommend_ort_int8

    torch.set_num_threads(1)
    model = load_efficientnet_lite0()
    calib = crops(load_photos(CALIBRATION_PHOTOS), per_photo=4 if args.quick else 8, seed=0)
    evals = crops(load_photos(EVAL_PHOTOS), per_photo=4 if args.quick else 10, seed=1)
    # the pipeline's own eval data (auto-fix selects nodes on it): other crops of the CALIBRATION photos
    select = crops(load_photos(CALIBRATION_PHOTOS), per_photo=4, seed=2)
    with torch.no_grad():
        ref = model(torch.from_numpy(evals)).numpy()
    if args.build_only:
        return time_builds(model, calib, select, args.json)
    cpu = detect_cpu()
    report: dict[str, object] = {"cpu": cpu.to_dict(), "recommendation": recommend_ort_int8(cpu).to_dict(),
                                 "calib_crops": len(calib), "eval_crops": len(evals), "select_crops": len(select),
                                 "runs": runs, "loadavg_start": Path("/proc/loadavg").read_text().split()[:3]}
    with tempfile.TemporaryDirectory() as tmp:
        arts = plain_tools(model, calib, tmp)
        edge, build_s, how = None, 0.0, ""
        if not args.no_edgepack_build:
            edge, build_s, how, report["auto_fix"] = build_with_converters(model, calib, select, tmp,
                                                                           auto_fix=not args.no_auto_fix)
            # the whole-build target is checked on the build that ran --auto-fix, not the pinned re-build
            build_s = report["auto_fix"].get("build_with_auto_fix_s", build_s)
        if edge is None:
            note = how
            edge, build_s, how = build_with_own_path(model, calib, tmp, recommend_ort_int8(cpu))
            how = f"{how} (converters.build not used: {note})" if note else how
        arts.update(edge)
        arts.update(build_tuned_onnx_int8(model, calib, tmp, recommend_ort_int8(cpu)))
        report["edgepack_path"] = how
        report["edgepack_build_s"] = round(build_s, 1)
        for k, a in arts.items():
            runner = ort_runner if a["runtime"] == "onnxruntime" else litert_runner
            a.update(parity(ref, runner(a["bytes"], 2)(evals)))
            if a["precision"] == "int8":
                a["by_confidence"] = confidence_breakdown(ref, runner(a["bytes"], 2)(evals))
            if k.startswith("edgepack"):
                a["bytes_by_role"] = (onnx_breakdown if a["runtime"] == "onnxruntime" else tflite_breakdown)(a["bytes"])
        report["noise_ceiling"] = noise_ceiling(model, evals, ref)
        run_latency(arts, evals, runs)
        torch_row = torch_latency(model, evals, runs)
    print(f"cpu: {cpu.model_name} isa={cpu.isa}; edgepack path: {how}; build {build_s:.1f}s")
    print_table(arts, torch_row)
    targets = check_targets(arts, build_s, "edgepack")
    for t in targets:
        print(f"  [{'PASS' if t['passed'] else 'MISS'}] {t['target']}: {t['measured']}")
    for k, a in arts.items():
        if "by_confidence" in a:
            print(f"  {k} top-1 agreement by torch top1-top2 softmax margin: {a['by_confidence']}")
    print(f"  noise ceiling (torch vs torch, +-1/255 pixel noise): {report['noise_ceiling']}")
    print(f"  auto-fix: {report.get('auto_fix')}")
    for k, a in arts.items():
        if "bytes_by_role" in a:
            print(f"  {k} bytes: {a['bytes_by_role']}")
    report["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    report["torch"] = torch_row
    report["artifacts"] = {k: {kk: vv for kk, vv in a.items() if kk != "bytes"} | {"size_bytes": len(a["bytes"])}
                           for k, a in arts.items()}
    report["targets"] = targets
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(report, f, indent=1, default=str)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
