"""Which quantized node costs the most output accuracy? Measure it, one node at a time.

Per-tensor SQNR (``_localize``) shows *where* the int8 model drifts, but not which node to
blame: error accumulates, ORT fuses removable activations away (so a Conv's own output has no
tensor to compare), and the loss from quantizing the graph input shows up nowhere at all.
So each candidate is measured directly: in a copy of the QDQ model, the node reads its inputs
in float (every ``DequantizeLinear`` feeding it is bypassed: activations take the tensor that
went into the ``QuantizeLinear``, clamped to the range it could represent, because ORT folds a
Relu/Clip into that range; weights and biases take the float initializers of the graph that
was quantized). The gain is the output SQNR of that copy minus the fully quantized model's,
both against the float graph, on a few held-out samples. One onnxruntime session per
candidate; above `max_candidates` candidates a coarse pass over contiguous groups picks where
to look (EfficientNet-Lite0: 60 candidates, 8 groups + 2 x 8 nodes = 26 sessions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SensitivityConfig", "bypass", "candidates", "rank", "reads_quantized"]


@dataclass(frozen=True)
class SensitivityConfig:
    input_name: str = "input"
    #: held-out samples each candidate is measured on
    samples: int = 8
    #: up to this many candidates, each is measured alone; above it, coarse to fine (below)
    max_candidates: int = 16
    #: coarse pass: the candidates in graph order are cut into this many contiguous groups, each
    #: group is bypassed as a whole (the gains of separate nodes add up roughly, as noise powers do)
    groups: int = 8
    #: fine pass: the nodes of this many best groups are then measured one by one
    refine_groups: int = 2


def _load(data: bytes) -> Any:
    import onnx
    return onnx.load_from_string(data)


def candidates(qdq: bytes) -> list[tuple[str, str]]:
    """``(name, op_type)`` of every node that reads a dequantized input, in graph order."""
    g = _load(qdq).graph
    dq_out = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [(n.name, n.op_type) for n in g.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and n.name and any(i in dq_out for i in n.input)]


def _dequantized(dq: Any, inits: dict[str, Any]) -> np.ndarray | None:
    """The float value a constant ``DequantizeLinear`` produces (fallback when no float source exists)."""
    from onnx import numpy_helper
    if any(i and i not in inits for i in dq.input):
        return None
    x = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    s = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
    zp = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if np.ndim(s) == 1 and x.ndim > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        s, zp = s.reshape(shape), np.reshape(zp, shape) if np.ndim(zp) else zp
    return ((x - zp) * s).astype(np.float32)


def bypass(qdq: bytes, float_graph: bytes, nodes: list[str] | tuple[str, ...]) -> bytes:
    """A copy of ``qdq`` where each node in ``nodes`` computes in float on float inputs."""
    import onnx
    from onnx import numpy_helper
    m = _load(qdq)
    g = m.graph
    finits = {t.name: t for t in _load(float_graph).graph.initializer}
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    wanted = set(nodes)
    clips: list[tuple[str, Any]] = []
    for node in g.node:
        if node.name not in wanted:
            continue
        for k, t in enumerate(node.input):
            dq = producer.get(t)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                lo_hi = _range(q, inits)
                if lo_hi is None:
                    continue  # non-constant quantization parameters: leave this input quantized
                # no rounding, but keep the clamp: ORT folds a Relu/Clip into the Q's range
                name = f"{node.name}__float_in{k}"
                g.initializer.extend([numpy_helper.from_array(np.float32(lo_hi[0]), name + "_min"),
                                      numpy_helper.from_array(np.float32(lo_hi[1]), name + "_max")])
                clips.append((node.name, onnx.helper.make_node(
                    "Clip", [q.input[0], name + "_min", name + "_max"], [name], name=name)))
                node.input[k] = name
                continue
            src = dq.input[0]
            orig = src[: -len("_quantized")] if src.endswith("_quantized") else src
            name = f"{orig}__float"
            if name not in inits:
                if orig in finits:
                    init = onnx.TensorProto()
                    init.CopyFrom(finits[orig])
                    init.name = name
                else:
                    value = _dequantized(dq, inits)
                    if value is None:
                        continue  # not a constant: leave this input quantized
                    init = numpy_helper.from_array(value, name)
                g.initializer.append(init)
                inits[name] = init
            node.input[k] = name
    for target, clip in clips:  # each Clip goes right before its consumer: the graph stays sorted
        at = next(i for i, n in enumerate(g.node) if n.name == target)
        g.node.insert(at, clip)
    return m.SerializeToString()


#: integer range of each quantized type (ONNX TensorProto data type -> (qmin, qmax))
_QRANGE = {2: (0, 255), 3: (-128, 127), 4: (0, 65535), 5: (-32768, 32767)}


def _range(q: Any, inits: dict[str, Any]) -> tuple[float, float] | None:
    """The real interval a QuantizeLinear can represent: ``[(qmin - zp) * s, (qmax - zp) * s]``."""
    from onnx import numpy_helper
    if q.input[1] not in inits or (len(q.input) > 2 and q.input[2] and q.input[2] not in inits):
        return None
    s = numpy_helper.to_array(inits[q.input[1]]).astype(np.float64)
    if len(q.input) > 2 and q.input[2]:
        zp_t = inits[q.input[2]]
        zp, dtype = numpy_helper.to_array(zp_t).astype(np.float64), zp_t.data_type
    else:
        zp, dtype = np.float64(0), 2  # ONNX: no zero point means uint8, zero point 0
    if dtype not in _QRANGE or np.ndim(s) or np.ndim(zp):
        return None
    qmin, qmax = _QRANGE[dtype]
    return float((qmin - zp) * s), float((qmax - zp) * s)


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    ref64, d = ref.astype(np.float64), out.astype(np.float64) - ref.astype(np.float64)
    den = float((d ** 2).sum())
    if not np.isfinite(den):
        return -1e9
    return float(10 * np.log10(float((ref64 ** 2).sum()) / den)) if den > 0 else 1e9


def _run(data: bytes, name: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1  # measured: on 2 shared cores, 2 threads made each session slower
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {name: x})[0]


def rank(qdq: bytes, float_graph: bytes, x: np.ndarray, config: SensitivityConfig | None = None,
         exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Measure the candidates' gains; ``{"base_sqnr_db", "rows" (best gain first), "groups", ...}``.

    ``exclude``: nodes already kept in float (skipped). Each row: ``node``, ``op_type``,
    ``order`` (position among the candidates), ``sqnr_db`` (output SQNR vs the float graph with
    this node in float) and ``gain_db`` (that minus the fully quantized model's output SQNR).
    With more than ``max_candidates`` candidates, only the nodes of the ``refine_groups`` groups
    with the largest group gain get rows (``groups`` lists every group's gain). Cost: one
    onnxruntime session per measurement (``sessions``).
    """
    cfg = config or SensitivityConfig()
    xs = x[: cfg.samples].astype(np.float32)
    ref = _run(float_graph, cfg.input_name, xs)
    base = _sqnr(ref, _run(qdq, cfg.input_name, xs))
    cands = [(i, n, op) for i, (n, op) in enumerate(candidates(qdq)) if n not in exclude]

    def gain(names: list[str]) -> float:
        return _sqnr(ref, _run(bypass(qdq, float_graph, names), cfg.input_name, xs)) - base

    groups: list[dict[str, Any]] = []
    chosen = cands
    if len(cands) > cfg.max_candidates:
        parts = [list(p) for p in np.array_split(np.arange(len(cands)), max(1, cfg.groups)) if len(p)]
        for p in parts:
            groups.append({"first": cands[p[0]][1], "last": cands[p[-1]][1], "nodes": len(p),
                           "gain_db": gain([cands[i][1] for i in p]), "_idx": p})
        top = sorted(groups, key=lambda g: -g["gain_db"])[: cfg.refine_groups]
        chosen = [cands[i] for g in top for i in g["_idx"]]
    rows = []
    for order, name, op in chosen:
        g = gain([name])
        rows.append({"node": name, "op_type": op, "order": order, "sqnr_db": base + g, "gain_db": g})
    rows.sort(key=lambda r: -r["gain_db"])
    return {"base_sqnr_db": base, "rows": rows, "measured": len(rows), "candidates": len(cands),
            "groups": [{k: v for k, v in g.items() if k != "_idx"} for g in groups],
            "sessions": 2 + len(groups) + len(rows)}


def reads_quantized(qdq: bytes, node: str) -> list[str]:
    """Producers of the activations ``node`` still reads through a Quantize/Dequantize pair."""
    g = _load(qdq).graph
    producer = {o: n for n in g.node for o in n.output}
    target = next((n for n in g.node if n.name == node), None)
    if target is None:
        return []
    out = []
    for t in target.input:
        dq = producer.get(t)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        src = producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        if src is not None and src.name:
            out.append(src.name)
    return out
