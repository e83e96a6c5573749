"""Find where an int8 ONNX artifact diverges from the float model, name the nodes that
cost the most, and fix it by keeping those nodes in float.

Two measurements:

* ``run``: onnxruntime's ``qdq_loss_debug`` augments both models so every intermediate
  tensor is an output, runs a few eval inputs and matches tensors by name. Per tensor:
  ``sqnr_vs_float_db`` (the accumulated damage) and ``local_sqnr_db`` (its own
  Quantize/Dequantize loss). The first diverging node is the first, in graph order, whose
  SQNR vs float falls under ``diverge_sqnr_db``.
* ``_sensitivity.rank``: each quantized node in turn computes in float on float inputs and
  the gain in *output* SQNR is measured. This is what ranks the worst nodes: tensor SQNR
  cannot blame the quantization of the graph input, nor a Conv whose output tensor ORT fused
  away with its activation (measured on EfficientNet-Lite0: the stem conv, worth +5 dB of
  output SQNR, ranked nowhere by tensor SQNR).

``auto_fix`` walks that ranking: keep the next node in float (``nodes_to_exclude``),
re-quantize with the cached calibration, re-check parity, keep the change only if it helped,
and stop when parity passes or at ``max_excluded`` nodes / ``max_tries`` re-quantizations.
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

__all__ = ["LocalizeConfig", "auto_fix", "run", "worst_nodes"]


@dataclass(frozen=True)
class LocalizeConfig:
    input_name: str = "input"
    diverge_sqnr_db: float = 20.0
    worst_nodes: int = 5
    max_excluded: int = 5
    samples: int = 8
    #: auto-fix re-quantizes at most this many times
    max_tries: int = 8
    #: a node whose measured output-SQNR gain is below this is not worth keeping in float
    min_gain_db: float = 0.25
    #: sensitivity: at most this many candidate nodes are measured
    max_candidates: int = 16


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


_EXACT = 200.0  # dB: a graph input is identical in both models


def run(float_onnx: bytes, quant_onnx: bytes, x: np.ndarray, config: LocalizeConfig | None = None) -> dict[str, Any]:
    """``{"first_diverging": {...} | None, "worst_tensors": [...], "tensors": n}``.

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
    memo: dict[str, float] = {}

    def upstream(t: str) -> float:
        # a tensor ORT fused away (a Conv output before its Clip) has no match: walk up to matched ones
        if t in by_tensor and by_tensor[t]["sqnr_vs_float_db"] is not None:
            return min(by_tensor[t]["sqnr_vs_float_db"], _EXACT)
        if t not in producer:
            return _EXACT  # a graph input or an initializer
        if t not in memo:
            memo[t] = _EXACT
            memo[t] = min([upstream(i) for i in producer[t][1].input if i] or [_EXACT])
        return memo[t]

    for r in rows:
        node = producer[r["tensor"]][1]
        before = min([upstream(t) for t in node.input if t] or [_EXACT])
        after = r["sqnr_vs_float_db"]
        r["sqnr_drop_db"] = None if after is None else before - min(after, _EXACT)
    first = next((r for r in rows if r["sqnr_vs_float_db"] is not None
                  and r["sqnr_vs_float_db"] < cfg.diverge_sqnr_db), None)
    ranked = sorted((r for r in rows if r["sqnr_drop_db"] is not None), key=lambda r: -r["sqnr_drop_db"])
    return {"first_diverging": first, "worst_tensors": ranked[: cfg.worst_nodes], "tensors": len(rows),
            "_by_node": {r["node"]: r for r in rows}}


def worst_nodes(loc: dict[str, Any], ranking: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The ``n`` nodes whose float version gains the most output SQNR, with their tensor figures."""
    out = []
    for r in ranking["rows"][:n]:
        t = loc.get("_by_node", {}).get(r["node"], {})
        out.append({"node": r["node"], "op_type": r["op_type"], "gain_db": r["gain_db"], "output_sqnr_db": r["sqnr_db"],
                    "tensor": t.get("tensor"), "sqnr_vs_float_db": t.get("sqnr_vs_float_db"),
                    "local_sqnr_db": t.get("local_sqnr_db")})
    return out


def auto_fix(
    requantize: Callable[[tuple[str, ...]], bytes],
    evaluate: Callable[[bytes], tuple[float, bool]],
    ranking: list[dict[str, Any]],
    reads_quantized: Callable[[bytes, str], list[str]],
    config: LocalizeConfig | None = None,
    start: tuple[float, bool] | None = None,
) -> dict[str, Any]:
    """Keep the worst nodes in float one at a time until parity passes.

    ``ranking``: ``_sensitivity.rank`` rows, largest gain first. ``requantize(excluded)``
    re-runs the quantizer with ``nodes_to_exclude``; ``evaluate(data)`` returns
    ``(score, passed)`` (higher is better); ``reads_quantized(data, node)`` lists the nodes
    whose quantized outputs ``node`` still reads after it was excluded (ORT quantizes the
    output of a removable activation such as Relu whatever its consumer is), and those are
    excluded with it, because the measured gain is for the node reading float inputs.
    A step is kept only if it raised the score; the best result so far is returned.
    ``start``: the fully quantized model's ``(score, passed)``.
    """
    cfg = config or LocalizeConfig()
    excluded: list[str] = []
    tries: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    current = start[0] if start else -math.inf
    for cand in ranking:
        if len(tries) >= cfg.max_tries or len(excluded) >= cfg.max_excluded:
            break
        if cand["gain_db"] < cfg.min_gain_db or cand["node"] in excluded:
            continue
        group = [cand["node"]]
        data = requantize(tuple(excluded + group))
        extra = [n for n in reads_quantized(data, cand["node"]) if n not in excluded and n not in group]
        if extra and len(excluded) + len(group) + len(extra) <= cfg.max_excluded and len(tries) + 1 < cfg.max_tries:
            tries.append({"excluded": excluded + group, "score": None, "passed": False,
                          "note": f"{cand['node']} still read quantized outputs of {', '.join(extra)}"})
            group += extra
            data = requantize(tuple(excluded + group))
        score, passed = evaluate(data)
        kept = score > current
        tries.append({"excluded": excluded + group, "score": score, "passed": passed, "kept": kept,
                      "gain_db": cand["gain_db"]})
        if not kept:
            continue
        excluded += group
        current = score
        best = {"excluded": list(excluded), "score": score, "passed": passed, "data": data}
        if passed:
            break
    return {"tries": tries, "best": best}
