"""Compression benchmark (issue #7, requirement 8), two parts in one run.

digits: a teacher CNN on scikit-learn's bundled digits is distilled into a
width-scaled student, magnitude-pruned, quantized to int8 (ORT
``quantize_static`` on an ONNX export of the student, via
``converters._onnx_eval``) and compared on the held-out split. Target: int8
student >= 10x smaller than the fp32 teacher, accuracy drop <= 1.0 point.

effnet: EfficientNet-Lite0 (real ImageNet weights) with 30% and 50% of its
channels removed by torch-pruning (``converters._prune_structured``), side by
side with plain ``torch.nn.utils.prune`` magnitude pruning + the same export.
No ImageNet here, so: size, latency at batch 1 (1 and 2 threads, p50,
interleaved) and parity against the unpruned model on photo crops, for both
artifacts a device runs: ONNX (TorchScript export, onnxruntime) and TFLite
(litert-torch, ``converters._tflite_eval``, ai-edge-litert's Interpreter).
Each TFLite file is also checked against its own torch model (conversion
parity), and its stored weights are counted. Target: >= 1.4x lower ONNX
latency; TFLite figures are reported next to it.

    .venv/bin/python benchmarks/bench_compress.py [--part digits|effnet|all] [--json OUT] [--artifacts DIR] [--runs N]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "tests" / "compress")]


def digits(width: float = 0.4) -> dict:
    from _digits import digits_split, train_teacher

    from converters import _distill, _onnx_eval, _prune, _transport

    xtr, ytr, xte, yte = digits_split(0)
    t0 = time.monotonic()
    teacher = train_teacher(xtr, ytr, epochs=15, width=32)
    student, drep = _distill.run(teacher, _distill.DistillConfig(width_multiplier=width, epochs=60, patience=10),
                                 train_x=xtr, train_y=ytr, eval_x=xte, eval_y=yte)
    student, prep = _prune.run(student, _prune.PruneConfig(sparsity=0.5, steps=3, finetune_epochs=2), train_x=xtr,
                               train_y=ytr, eval_x=xte, eval_y=yte)
    t_fp32 = _onnx_eval.export(teacher, xte)
    s_fp32 = _onnx_eval.export(student, xte)
    s_int8 = _onnx_eval.quantize(s_fp32, "int8-static", xtr[:256], "minmax")
    rows = {}
    for name, art in (("teacher fp32", t_fp32), ("student fp32", s_fp32), ("student int8", s_int8)):
        r = _onnx_eval.evaluate(art, xte, yte, threads=1, runs=200)
        rows[name] = {"bytes": len(art), "xz_bytes": _transport.measure(art)["xz"], "accuracy": r["accuracy"],
                      "p50_ms": r["latency"]["p50_ms"]}
    t, s = rows["teacher fp32"], rows["student int8"]
    return {"rows": rows, "size_ratio": t["bytes"] / s["bytes"],
            "accuracy_drop_points": 100 * (t["accuracy"] - s["accuracy"]), "width_multiplier": width,
            "distill_epochs": drep.details["epochs_run"], "prune_sparsity": prep.details["final_sparsity"],
            "seconds": time.monotonic() - t0, "test_samples": len(xte),
            "targets_met": {"size >= 10x": t["bytes"] / s["bytes"] >= 10,
                            "drop <= 1.0 pt": 100 * (t["accuracy"] - s["accuracy"]) <= 1.0}}


def _magnitude(model, amount: float):
    import torch.nn as nn
    import torch.nn.utils.prune as tprune

    m = copy.deepcopy(model)
    params = [(c, "weight") for c in m.modules() if isinstance(c, (nn.Conv2d, nn.Linear))]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=amount)
    for c, n in params:
        tprune.remove(c, n)
    return m


def _cached(folder: Path | None, name: str, make) -> bytes:
    """``make()``, or the bytes saved under ``folder`` by an earlier run (litert-torch takes minutes on this
    model; pruning is deterministic, seed 0, so a saved file is the same model)."""
    path = folder / name.replace(" ", "_").replace("%", "pct") if folder else None
    if path is not None and path.exists():
        return path.read_bytes()
    data = make()
    if path is not None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return data


def effnet(ratios: tuple[float, ...] = (0.3, 0.5), runs: int = 60, artifacts: Path | None = None) -> dict:
    import torch
    from _effnet_data import EVAL_PHOTOS, crops, load_efficientnet_lite0, load_photos
    from _measure import litert_runner, measure_interleaved, ort_runner, parity

    from converters import _onnx_eval, _prune_structured, _tflite_eval, _transport

    x = crops(load_photos(EVAL_PHOTOS), 2, seed=1)
    base = load_efficientnet_lite0()
    models, prune_info = {"unpruned": base}, {}
    for r in ratios:
        t0 = time.monotonic()
        m, rep = _prune_structured.run(base, _prune_structured.StructuredPruneConfig(ratio=r, round_to=8), example=x)
        models[f"structured {int(r * 100)}%"] = m
        prune_info[f"structured {int(r * 100)}%"] = {k: rep.details[k] for k in
                                                     ("macs_before", "macs_after", "params_before", "params_after")}
        prune_info[f"structured {int(r * 100)}%"]["prune_seconds"] = time.monotonic() - t0
    models["torch.nn.utils.prune 50%"] = _magnitude(base, 0.5)
    arts = {k: _cached(artifacts, f"{k}.onnx", lambda m=m: _onnx_eval.export(m, x)) for k, m in models.items()}
    ref = None
    out: dict = {"photos_crops": len(x), "models": {}}
    for k, a in arts.items():
        y = ort_runner(a, 2)(x)
        ref = y if ref is None else ref
        out["models"][k] = {"bytes": len(a), **{f"{c}_bytes": v for c, v in _transport.measure(a).items()
                                                if c in ("zlib", "xz")},
                            "parity_vs_unpruned": parity(ref, y), **prune_info.get(k, {})}
    for threads in (1, 2):
        lat = measure_interleaved({k: ort_runner(a, threads) for k, a in arts.items()}, x, runs=runs, rounds=6)
        for k, v in lat.items():
            out["models"][k][f"ort_{threads}t"] = v.to_dict()
            out["models"][k][f"speedup_{threads}t"] = lat["unpruned"].p50_ms / v.p50_ms
    tfl = {}
    for k, m in models.items():
        t0 = time.monotonic()
        tfl[k] = _cached(artifacts, f"{k}.tflite", lambda m=m: _tflite_eval.export(m, x))
        with torch.no_grad():
            own = m.eval()(torch.as_tensor(x)).numpy()
        y = litert_runner(tfl[k], 2)(x)
        out["models"][k]["tflite"] = {
            "bytes": len(tfl[k]), "xz_bytes": _transport.measure(tfl[k])["xz"],
            "stored_weights": _tflite_eval.param_count(tfl[k]), "convert_seconds": time.monotonic() - t0,
            "parity_vs_unpruned": parity(ref, y), "parity_vs_own_torch": parity(own, y)}
    for threads in (1, 2):
        lat = measure_interleaved({k: litert_runner(a, threads) for k, a in tfl.items()}, x, runs=runs, rounds=6)
        for k, v in lat.items():
            out["models"][k]["tflite"][f"litert_{threads}t"] = v.to_dict()
            out["models"][k]["tflite"][f"speedup_{threads}t"] = lat["unpruned"].p50_ms / v.p50_ms
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("digits", "effnet", "all"), default="all")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--artifacts", type=Path, help="effnet: keep/reuse the exported ONNX and TFLite files here")
    ap.add_argument("--runs", type=int, default=60, help="effnet: timed calls per model and thread count")
    args = ap.parse_args()
    torch.set_num_threads(2)
    res = {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                       "torch": torch.__version__}, "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
    if args.part in ("digits", "all"):
        res["digits"] = digits()
    if args.part in ("effnet", "all"):
        res["effnet"] = effnet(runs=args.runs, artifacts=args.artifacts)
    res["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    text = json.dumps(res, indent=1, default=float)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
