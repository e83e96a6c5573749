"""Find where an int8 ONNX artifact diverges from the float model, and fix it
by keeping the worst nodes in float.

Uses onnxruntime's ``qdq_loss_debug``: both models are augmented so every
intermediate tensor is an output, run on a few eval inputs, and matched by
tensor name. Per tensor we get ``xmodel_err`` (SQNR of the quantized model's
tensor vs the float model's: the accumulated damage) and ``qdq_err`` (SQNR of
the tensor before vs after its own Quantize/Dequantize: the local damage).
The first diverging node is the first, in graph order, whose ``xmodel_err``
falls under ``diverge_sqnr_db``; the worst nodes have the lowest ``qdq_err``.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LocalizeConfig", "auto_fix", "run"]


@dataclass(frozen=True)
class LocalizeConfig:
    input_name: str = "input"
    diverge_sqnr_db: float = 20.0
    worst_nodes: int = 5
    max_excluded: int = 5
    samples: int = 16


class _Reader:
    def __init__(self, name: str, x: np.ndarray) -> None:
        self._it = iter([{name: x[i:i + 1]} for i in range(len(x))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def __iter__(self) -> _Reader:  # qdq_loss_debug iterates; quantize_static calls get_next
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)


def _finite(v: float) -> float | None:
    return None if v is None or math.isnan(v) else (v if math.isfinite(v) else (1e9 if v > 0 else -1e9))


def run(float_onnx: bytes, quant_onnx: bytes, x: np.ndarray, config: LocalizeConfig | None = None) -> dict[str, Any]:
    """``{"first_diverging": {...} | None, "worst": [...], "tensors": n}``.

    ``float_onnx`` must be the graph that was quantized (after pre-processing),
    so its node names are the ones ``nodes_to_exclude`` takes.
    """
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as qd

    cfg = config or LocalizeConfig()
    xs = x[: cfg.samples].astype(np.float32)
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(io.StringIO()):
        tmp = Path(d)
        paths = {}
        for tag, data in (("float", float_onnx), ("quant", quant_onnx)):
            (tmp / f"{tag}.onnx").write_bytes(data)
            qd.modify_model_output_intermediate_tensors(str(tmp / f"{tag}.onnx"), str(tmp / f"{tag}.aug.onnx"))
            paths[tag] = str(tmp / f"{tag}.aug.onnx")
        acts_f = qd.collect_activations(paths["float"], _Reader(cfg.input_name, xs))
        acts_q = qd.collect_activations(paths["quant"], _Reader(cfg.input_name, xs))
    errors = qd.compute_activation_error(qd.create_activation_matching(acts_q, acts_f))
    graph = onnx.load_from_string(float_onnx).graph
    producer = {out: (i, n) for i, n in enumerate(graph.node) for out in n.output}
    rows = []
    for tensor, err in errors.items():
        if tensor not in producer:
            continue
        i, node = producer[tensor]
        rows.append({"node": node.name, "op_type": node.op_type, "tensor": tensor, "order": i,
                     "sqnr_vs_float_db": _finite(err.get("xmodel_err")), "local_sqnr_db": _finite(err.get("qdq_err"))})
    rows.sort(key=lambda r: r["order"])
    by_tensor = {r["tensor"]: r for r in rows}
    for r in rows:
        # the damage a node adds: how far SQNR vs float drops from its worst input to its output
        node = producer[r["tensor"]][1]
        ins = [by_tensor[t]["sqnr_vs_float_db"] for t in node.input if t in by_tensor
               and by_tensor[t]["sqnr_vs_float_db"] is not None]
        before = min(ins) if ins else 200.0  # a graph input is exact in both models
        after = r["sqnr_vs_float_db"]
        r["sqnr_drop_db"] = None if after is None else min(before, 200.0) - min(after, 200.0)
        r["inputs_from"] = [producer[t][1].name for t in node.input if t in producer]
    first = next((r for r in rows if r["sqnr_vs_float_db"] is not None
                  and r["sqnr_vs_float_db"] < cfg.diverge_sqnr_db), None)
    ranked = sorted((r for r in rows if r["sqnr_drop_db"] is not None),
                    key=lambda r: (r["sqnr_vs_float_db"] >= cfg.diverge_sqnr_db, -r["sqnr_drop_db"]))
    public = [{k: v for k, v in r.items() if k != "inputs_from"} for r in ranked[: cfg.worst_nodes]]
    return {"first_diverging": first and {k: v for k, v in first.items() if k != "inputs_from"},
            "worst": public, "tensors": len(rows), "_ranked": ranked,
            "_inputs_from": {n.name: [producer[t][1].name for t in n.input if t in producer] for n in graph.node}}


def _frontier(node: str, excluded: list[str], inputs_from: dict[str, list[str]]) -> list[str]:
    """``node`` if still quantized, else the nearest quantized nodes feeding it (walking up through
    nodes already kept in float), with the producers of their inputs."""
    if node not in excluded:
        return [node, *inputs_from.get(node, [])]
    seen, stack, out = set(), list(inputs_from.get(node, [])), []
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in excluded:
            stack.extend(inputs_from.get(n, []))
        else:
            out.append(n)
    return out


def auto_fix(
    requantize: Callable[[tuple[str, ...]], bytes],
    evaluate: Callable[[bytes], tuple[float, bool]],
    relocalize: Callable[[bytes], dict[str, Any]],
    loc: dict[str, Any],
    config: LocalizeConfig | None = None,
) -> dict[str, Any]:
    """Keep the worst nodes in float one at a time until parity passes.

    ``requantize(excluded)`` re-runs the quantizer with ``nodes_to_exclude``;
    ``evaluate(data)`` returns ``(score, passed)`` (higher score is better);
    ``relocalize(data)`` re-runs ``run`` on the new model, because keeping one
    node in float moves the damage (a fused Gemm+Relu, once split, quantizes
    the Gemm output instead). The damaging Quantize/Dequantize pair sits on the
    blamed node's INPUT, so each step excludes the node with the producers of
    its inputs.
    Keeps the best result so far and stops after ``max_excluded`` nodes.
    """
    cfg = config or LocalizeConfig()
    excluded: list[str] = []
    tries: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    blamed: str | None = None
    while True:
        group: list[str] = []
        diverged = [r for r in loc["_ranked"] if r["sqnr_vs_float_db"] < cfg.diverge_sqnr_db]
        # a node kept in float drops out of the comparison; then keep walking up from the last one blamed
        candidates = [r["node"] for r in diverged] or ([blamed] if blamed else [r["node"] for r in loc["_ranked"]])
        for node in candidates:
            group = [n for n in dict.fromkeys(_frontier(node, excluded, loc["_inputs_from"]))
                     if n and n not in excluded]
            if group:
                blamed = node
                break
        if not group or len(excluded) + len(group) > cfg.max_excluded:
            break
        excluded.extend(group)
        data = requantize(tuple(excluded))
        score, passed = evaluate(data)
        tries.append({"excluded": list(excluded), "score": score, "passed": passed})
        if best is None or score > best["score"]:
            best = {"excluded": list(excluded), "score": score, "passed": passed, "data": data}
        if passed:
            break
        loc = relocalize(data)
    return {"tries": tries, "best": best}
