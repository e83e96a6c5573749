"""Federated update compression on non-IID digits: bytes per update and final accuracy per codec.

Softmax regression (64x10 + 10 = 650 float32 params) on sklearn's ``load_digits``,
10 clients with a label-sorted non-IID split (2 shards each, so mostly 2 classes
per client), ``--local-epochs`` of full-batch gradient descent per round, FedAvg
through ``RoundAccumulator``. Every update goes through the real device path:
``compress`` (+ ``ErrorFeedback`` kept per client) -> ``encode_update`` (Ed25519
signed) -> ``validate_update`` -> ``fold_update``. "tensor B" is the actual
encoded payload length (sum of ``len(EncodedTensor.data)``); "signed blob B"
adds the signed JSON header. Deterministic under ``--seed`` (data split,
stochastic rounding and update ids; signatures do not affect the numbers).

    .venv/bin/python benchmarks/bench_fl_compress.py --rounds 30 --json /tmp/fl_compress.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Mapping

import numpy as np
from sklearn.datasets import load_digits

from edgepack import generate_key
from edgepack.federated import (
    AcceptedUpdate,
    CompressionConfig,
    ErrorFeedback,
    ParamSpec,
    RoundAccumulator,
    RoundContext,
    ValidationPolicy,
    compress,
    encode_update,
    fold_update,
    validate_update,
)

CASES: list[tuple[str, str, float, bool]] = [  # label, codec, topk_ratio, error feedback
    ("none", "none", 1.0, False),
    ("int8 + EF", "int8", 1.0, True),
    ("top-10% + EF", "topk", 0.10, True),
    ("top-1% + EF", "topk", 0.01, True),
]


def load(num_clients: int, seed: int, n_test: int = 400):
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    xt, yt, xr, yr = x[:n_test], y[:n_test], x[n_test:], y[n_test:]
    by_label = np.argsort(yr, kind="stable")
    shards = np.array_split(by_label, 2 * num_clients)
    picks = rng.permutation(2 * num_clients)
    clients = []
    for c in range(num_clients):
        idx = np.concatenate([shards[picks[2 * c]], shards[picks[2 * c + 1]]])
        clients.append((xr[idx], yr[idx]))
    return clients, (xt, yt)


def accuracy(params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float(((x @ params["W"] + params["b"]).argmax(1) == y).mean())


def local_delta(params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, epochs: int,
                lr: float) -> dict[str, np.ndarray]:
    """Full-batch gradient descent on cross-entropy; returns trained - global."""
    w, b = params["W"].astype(np.float64), params["b"].astype(np.float64)
    onehot = np.eye(10)[y]
    for _ in range(epochs):
        z = x @ w + b
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(y)
        w -= lr * (x.T @ g)
        b -= lr * g.sum(0)
    return {"W": (w - params["W"]).astype(np.float32), "b": (b - params["b"]).astype(np.float32)}


def run_case(label: str, codec: str, ratio: float, use_ef: bool, args: argparse.Namespace) -> dict:
    clients, (xt, yt) = load(args.clients, args.seed)
    params = {"W": np.zeros((64, 10), np.float32), "b": np.zeros(10, np.float32)}
    spec = ParamSpec.from_params(params)
    keys = {f"dev-{i}": generate_key() for i in range(args.clients)}
    registry = {d: k.public for d, k in keys.items()}
    feedback = {d: ErrorFeedback() for d in keys}
    cfg = CompressionConfig(codec, topk_ratio=ratio)
    policy = ValidationPolicy()
    rng = np.random.default_rng(args.seed + 1)
    tensor_bytes: list[int] = []
    blob_bytes: list[int] = []
    acc_curve: list[float] = []
    t0 = time.perf_counter()
    for r in range(1, args.rounds + 1):
        ctx = RoundContext(f"round-{r}", base_version=r, spec=spec, codecs=(codec,))
        acc = RoundAccumulator(spec)
        for i, (dev, key) in enumerate(keys.items()):
            x, y = clients[i]
            delta = local_delta(params, x, y, args.local_epochs, args.lr)
            tensors = compress(delta, cfg, feedback=feedback[dev] if use_ef else None, rng=rng)
            tensor_bytes.append(sum(len(t.data) for t in tensors))
            blob = encode_update(key, round_id=ctx.round_id, base_version=r, device_id=dev,
                                 num_samples=len(y), tensors=tensors, update_id=f"r{r}-{dev}")
            blob_bytes.append(len(blob))
            res = validate_update(blob, ctx, registry, policy, seen_update_ids=acc)
            if not isinstance(res, AcceptedUpdate):
                raise SystemExit(f"{label}: update rejected: {res.to_dict()}")
            if not fold_update(acc, res, policy).folded:
                raise SystemExit(f"{label}: update not folded")
        mean = acc.finalize()
        params = {k: (params[k].astype(np.float64) + mean[k]).astype(np.float32) for k in params}
        acc_curve.append(accuracy(params, xt, yt))
    raw = spec.nbytes
    return {"codec": label, "codec_name": codec, "topk_ratio": ratio if codec == "topk" else None,
            "error_feedback": use_ef, "tensor_bytes": int(np.median(tensor_bytes)),
            "uncompressed_bytes": raw, "signed_blob_bytes": int(np.median(blob_bytes)),
            "acc_round5": acc_curve[min(4, len(acc_curve) - 1)], "acc_final": acc_curve[-1],
            "acc_curve": acc_curve, "time_s": round(time.perf_counter() - t0, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--local-epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="OUT", help="write the results as JSON to OUT")
    args = ap.parse_args()
    rows = [run_case(*case, args) for case in CASES]
    print(f"## {platform.machine()}, python {platform.python_version()}, numpy {np.__version__}")
    print(f"digits softmax regression, {args.clients} non-IID clients, {args.rounds} rounds, "
          f"{args.local_epochs} local epochs, seed {args.seed}")
    print(f"{'codec':<14} {'tensor B':>9} {'vs none':>8} {'blob B':>7} {'acc@5':>6} {'acc@final':>9} {'time':>6}")
    for r in rows:
        print(f"{r['codec']:<14} {r['tensor_bytes']:>9} {r['tensor_bytes'] / r['uncompressed_bytes']:>8.1%} "
              f"{r['signed_blob_bytes']:>7} {r['acc_round5']:>6.3f} {r['acc_final']:>9.3f} {r['time_s']:>5.1f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
