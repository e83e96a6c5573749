"""The foundation demo: make a small ONNX model in code, bundle and sign it with
a key made on the spot, then verify and inspect it with the real CLI.

Run: .venv/bin/python examples/bundle_demo.py [--out demo-out/bundle]
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import edgepack as ep


def make_model() -> bytes:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 32)).astype(np.float32) * 0.1
    w2 = rng.standard_normal((32, 10)).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "W2"], ["logits"])],
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("demo-out/bundle"))
    args = ap.parse_args()
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model = make_model()
    x = np.random.default_rng(1).uniform(0, 16, (4, 64)).astype(np.float32)
    y = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    golden = io.BytesIO()
    np.savez(golden, in__input=x, out__logits=y, **{"mlp.fp32.onnx__logits": y})

    key = ep.generate_key()
    ep.save_key_pair(key, out / "keys", "demo-release")
    ep.Trust.of([key.public]).save(out / "trust.json")
    b = ep.BundleBuilder("mlp", 1, io={
        "task": "classification", "labels": [str(i) for i in range(10)],
        "inputs": [{"name": "input", "shape": ["batch", 64], "dtype": "float32", "layout": "NC",
                    "normalization": None, "range": {"min": 0.0, "max": 16.0}, "reference": None}],
        "outputs": [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}],
    }, lineage={"source_sha256": ep._bundle.sha256_hex(model), "seed": 0, "parent_version": None})
    b.add_artifact("mlp.fp32.onnx", model, format="onnx", precision="fp32",
                   parity={"passed": True, "max_abs": 0.0, "cosine": 1.0})
    b.set_golden(golden.getvalue())
    bundle = b.write(out / "mlp-1.edgepack")  # unsigned: the CLI signs it below

    cli = [sys.executable, "-m", "edgepack"]
    steps = [
        ["sign", str(bundle), "--key", str(out / "keys" / "demo-release.key")],
        ["verify", str(bundle), "--trust", str(out / "trust.json")],
        ["inspect", str(bundle)],
    ]
    for step in steps:
        print(f"\n$ edgepack {' '.join(step)}")
        rc = subprocess.run([*cli, *step]).returncode
        if rc:
            return rc
    print(f"\nDemo bundle: {bundle} (trust file {out / 'trust.json'}; the demo key is in {out / 'keys'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
