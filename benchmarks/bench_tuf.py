"""TUF delivery on the device side, and parameter-delta bytes, measured side by side.

    .venv/bin/python benchmarks/bench_tuf.py [--runs 5] [--devices 1000]

A. TUF refresh cost: plain ``tuf.ngclient.Updater`` (its default urllib3 fetcher)
   vs edgepack's ``TufClient`` (urllib fetcher), against the same repository
   served by ``fleet_server._tuf_http`` on 127.0.0.1: cold refresh + lookup,
   warm refresh with nothing new, refresh after one publish.
B. A 5 MB target: ``Updater.download_target`` vs ``TufClient.download``, and the
   bytes re-sent when the link drops at 50 % (the plain updater starts over).
C. Bytes for a fine-tuned parameter update of a ~4.4 MB MLP trained on sklearn
   digits: full bundle vs ``.epu`` whole vs ``.epu`` delta-xor / delta-add,
   head-only and full fine-tunes, times ``--devices``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuf.ngclient import Updater  # noqa: E402

from edgepack import BundleBuilder, generate_key  # noqa: E402
from edgepack._params import encode_param_update  # noqa: E402
from fleet_server._tuf import TufRepository  # noqa: E402
from fleet_server._tuf_http import TufRequestHandler, serve_tuf  # noqa: E402
from runtime.agent import DownloadInterruptedError, TufClient  # noqa: E402


class DropOnce(TufRequestHandler):
    drop_at: dict[str, int] = {}
    sent = 0

    def write_body(self, file: Path, offset: int, count: int) -> None:
        limit = DropOnce.drop_at.pop(file.name, None)
        if limit is not None:
            with open(file, "rb") as f:
                f.seek(offset)
                self.wfile.write(f.read(limit))
            DropOnce.sent += limit
            self.close_connection = True
            self.connection.shutdown(2)
            return
        DropOnce.sent += count
        super().write_body(file, offset, count)


def _median_ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 2)


def bench_refresh(tmp: Path, runs: int) -> dict:
    keys = [generate_key() for _ in range(3)]
    repo = TufRepository.create(tmp / "repo", keys, 2, generate_key(), generate_key(),
                                groups=[f"g{i}" for i in range(20)])
    for i in range(50):  # a realistic history: 50 releases spread over 20 groups
        repo.publish_target(f"g{i % 20}", f"m-{i}.edgepack", os.urandom(2048), {"version": i})
    server, thread = serve_tuf(repo, handler=DropOnce)
    url, root = server.url, repo.root_bytes()
    target = "groups/g3/m-43.edgepack"
    res: dict = {"groups": 20, "targets": 50}
    try:
        for label in ("plain", "edgepack"):
            cold, warm, after = [], [], []
            for r in range(runs):
                d = tmp / f"{label}-{r}"
                (d / "tuf").mkdir(parents=True)

                def make(d: Path = d, label: str = label) -> object:
                    if label == "plain":
                        return Updater(str(d / "tuf"), f"{url}/tuf/metadata/", str(d), f"{url}/tuf/targets/",
                                       bootstrap=root)
                    return TufClient(d, url, root, timeout=10)

                def lookup(c: object, label: str = label) -> None:
                    assert (c.get_targetinfo(target) if label == "plain" else c.target_info(target)) is not None

                t0 = time.perf_counter()
                c = make()
                c.refresh()
                lookup(c)
                cold.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                c = make()
                c.refresh()
                lookup(c)
                warm.append(time.perf_counter() - t0)
                repo.publish_target("g3", f"extra-{label}-{r}.edgepack", os.urandom(1024))
                t0 = time.perf_counter()
                c = make()
                c.refresh()
                lookup(c)
                after.append(time.perf_counter() - t0)
            res[label] = {"cold_ms": _median_ms(cold), "warm_ms": _median_ms(warm), "after_publish_ms": _median_ms(after)}
        c = TufClient(tmp / "count", url, root, timeout=10)
        s = c.refresh()
        res["edgepack_cold_requests"], res["edgepack_cold_bytes"] = s.requests, s.bytes
        s = TufClient(tmp / "count", url, root, timeout=10).refresh()
        res["edgepack_warm_requests"], res["edgepack_warm_bytes"] = s.requests, s.bytes

        big = os.urandom(5 << 20)
        info = repo.publish_target("g1", "big-1.edgepack", big)
        stored = f"{info.hashes['sha256']}.big-1.edgepack"
        for label in ("plain", "edgepack"):
            times = []
            for r in range(runs):
                d = tmp / f"dl-{label}-{r}"
                (d / "tuf").mkdir(parents=True)
                t0 = time.perf_counter()
                if label == "plain":
                    u = Updater(str(d / "tuf"), f"{url}/tuf/metadata/", str(d), f"{url}/tuf/targets/", bootstrap=root)
                    u.download_target(u.get_targetinfo("groups/g1/big-1.edgepack"))
                else:
                    c = TufClient(d, url, root, timeout=10)
                    c.download(c.require_target("groups/g1/big-1.edgepack"))
                times.append(time.perf_counter() - t0)
            res[f"{label}_download_5MB_ms"] = _median_ms(times)
        # a drop at 50 %: what each client sends again to finish
        for label in ("plain", "edgepack"):
            d = tmp / f"drop-{label}"
            (d / "tuf").mkdir(parents=True)
            DropOnce.drop_at[stored] = len(big) // 2
            DropOnce.sent = 0
            if label == "plain":
                u = Updater(str(d / "tuf"), f"{url}/tuf/metadata/", str(d), f"{url}/tuf/targets/", bootstrap=root)
                ti = u.get_targetinfo("groups/g1/big-1.edgepack")
                # the plain updater raises a DownloadError or a length mismatch
                with contextlib.suppress(Exception):
                    u.download_target(ti)
                u.download_target(ti)
            else:
                c = TufClient(d, url, root, timeout=10)
                ti = c.require_target("groups/g1/big-1.edgepack")
                with contextlib.suppress(DownloadInterruptedError):
                    c.download(ti)
                c.download(ti)
            res[f"{label}_bytes_to_finish_after_drop_at_50pct"] = DropOnce.sent
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    return res


def _mlp_onnx(ws: list[np.ndarray], bs: list[np.ndarray]) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, prev = [], [], "input"
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        out = "logits" if i == len(ws) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [out if i == len(ws) - 1 else f"z{i}"]))
        if i < len(ws) - 1:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [out]))
        inits += [numpy_helper.from_array(w.astype(np.float32), f"W{i}"), numpy_helper.from_array(b.astype(np.float32), f"B{i}")]
        prev = out
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def bench_delta(tmp: Path, devices: int) -> dict:
    import torch
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    net = torch.nn.Sequential(torch.nn.Linear(64, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024),
                              torch.nn.ReLU(), torch.nn.Linear(1024, 10))

    def train(params: list, epochs: int, lr: float, xs: torch.Tensor) -> None:
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(epochs):
            for i in range(0, len(xs), 128):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(xs[i:i + 128]), y[i:i + 128]).backward()
                opt.step()

    train(list(net.parameters()), 5, 1e-3, x)

    def weights() -> tuple[list[np.ndarray], list[np.ndarray]]:
        lin = [m for m in net if isinstance(m, torch.nn.Linear)]
        return [m.weight.detach().numpy().T.copy() for m in lin], [m.bias.detach().numpy().copy() for m in lin]

    base_w, base_b = weights()
    base = _mlp_onnx(base_w, base_b)
    key = generate_key()
    b = BundleBuilder("mlp", 1, io={"inputs": [], "outputs": []})
    b.add_artifact("mlp.fp32.onnx", base, format="onnx", precision="fp32")
    bundle = b.write(tmp / "mlp-1.edgepack", [key]).stat().st_size
    art = "artifacts/mlp.fp32.onnx"
    shifted = x + 0.1 * torch.randn_like(x)  # fine-tune on noisier inputs: a device-side domain shift
    state = {k: v.clone() for k, v in net.state_dict().items()}
    out: dict = {"model_params": int(sum(w.size + bb.size for w, bb in zip(base_w, base_b, strict=True))),
                 "bundle_bytes": bundle, "onnx_bytes": len(base), "devices": devices}
    for label, params, lr in (("head_only", list(net[4].parameters()), 1e-3), ("full", list(net.parameters()), 1e-4)):
        net.load_state_dict(state)
        train(params, 1, lr, shifted)
        nw, nb = weights()
        new = {art: {**{f"W{i}": w for i, w in enumerate(nw)}, **{f"B{i}": bb for i, bb in enumerate(nb)}}}
        changed = {k: v for k, v in new[art].items()
                   if not np.array_equal(v, (base_w + base_b)[int(k[1:]) + (0 if k[0] == "W" else len(base_w))])}
        sizes = {}
        for enc in ("whole", "delta-xor", "delta-add"):
            data, _ = encode_param_update(model="mlp", version=2, base_version=1, base_artifacts={art: ("onnx", base)},
                                          new_weights={art: changed}, keys=[key], encoding=enc)
            sizes[enc] = len(data)
        best = min(sizes["delta-xor"], sizes["delta-add"])
        out[label] = {"tensors_changed": len(changed), **{f"epu_{k}_bytes": v for k, v in sizes.items()},
                      "served_bytes": min(best, sizes["whole"]),
                      "fleet_MB_full_bundle": round(bundle * devices / 1e6, 1),
                      "fleet_MB_whole_update": round(sizes["whole"] * devices / 1e6, 1),
                      "fleet_MB_served": round(min(best, sizes["whole"]) * devices / 1e6, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--devices", type=int, default=1000)
    args = ap.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as d:
        import json

        print(json.dumps({"refresh": bench_refresh(Path(d), args.runs)}, indent=1))
        print(json.dumps({"delta": bench_delta(Path(d), args.devices)}, indent=1))


if __name__ == "__main__":
    main()
