"""Make an ONNX artifact smaller without changing a single output bit.

Measured on EfficientNet-Lite0's QDQ int8 artifact (5,175,574 B; docs/build.md, "Artifact size"):
besides 4.61 MB of int8 weights it carried 91 KB of int32 bias zero points and 25 KB of int8
weight zero points that are all 0 (symmetric weights, and biases are always zero-point 0),
91 KB of float32 bias scales that are exactly ``input_scale * weight_scale`` (ORT computes
them that way), 79 KB of torch exporter debug metadata on nodes (stack traces and FX node
reprs, which also leak the builder's file paths), and ORT's long generated Q/DQ node names.

``run`` removes exactly those, each only where it is provably exact:

* ``strip_metadata``: node ``metadata_props`` and ``doc_string``, graph ``value_info``;
* ``drop_zero_points``: the zero point input of a ``DequantizeLinear`` whose data is an
  initializer and whose zero point is all zeros (ONNX: an absent zero point is 0 and the
  output type follows the input);
* ``derive_bias_scales``: a bias ``DequantizeLinear``'s scale array becomes a ``Mul`` of the
  input scale and the weight scale when the stored array equals that float32 product bit
  for bit (onnxruntime constant-folds it when the session loads, before its QDQ fusions);
* ``short_names``: Quantize/Dequantize node names and the names of tensors only a weight's
  ``DequantizeLinear`` produces become short ids (compute nodes and activations keep theirs:
  ``nodes_to_exclude`` and ``qdq_loss_debug`` match by those names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CompactConfig", "run"]


@dataclass(frozen=True)
class CompactConfig:
    strip_metadata: bool = True
    drop_zero_points: bool = True
    derive_bias_scales: bool = True
    short_names: bool = True


def _strip_metadata(g: Any) -> None:
    for n in g.node:
        del n.metadata_props[:]
        n.doc_string = ""
    del g.value_info[:]


def _drop_zero_points(g: Any, inits: dict[str, Any]) -> None:
    from onnx import numpy_helper
    for n in g.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits or len(n.input) < 3 or not n.input[2]:
            continue
        zp = inits.get(n.input[2])
        if zp is not None and not numpy_helper.to_array(zp).any():
            del n.input[2]


def _derive_bias_scales(g: Any, inits: dict[str, Any]) -> None:
    from onnx import helper, numpy_helper
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for n in list(g.node):
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits or n.input[1] not in inits:
            continue
        users = consumers.get(n.output[0], [])
        if len(users) != 1 or users[0].op_type not in ("Conv", "Gemm") or len(users[0].input) < 3 \
                or users[0].input[2] != n.output[0]:
            continue
        x_dq, w_dq = producer.get(users[0].input[0]), producer.get(users[0].input[1])
        if x_dq is None or w_dq is None or x_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear" \
                or x_dq.input[1] not in inits or w_dq.input[1] not in inits:
            continue
        xs = numpy_helper.to_array(inits[x_dq.input[1]])
        ws = numpy_helper.to_array(inits[w_dq.input[1]])
        stored = numpy_helper.to_array(inits[n.input[1]])
        if xs.dtype != np.float32 or ws.dtype != np.float32 or xs.ndim != 0:
            continue
        product = np.multiply(xs, ws, dtype=np.float32)
        if product.shape != stored.shape or not np.array_equal(product.view(np.uint32), stored.view(np.uint32)):
            continue  # e.g. ORT adjusted the weight scale for a tiny bias scale: keep the stored array
        out = f"{n.input[1]}__mul"
        g.node.insert(list(g.node).index(n), helper.make_node("Mul", [x_dq.input[1], w_dq.input[1]], [out],
                                                              name=out))
        n.input[1] = out


def _short_names(g: Any, inits: dict[str, Any]) -> None:
    graph_io = {v.name for v in list(g.input) + list(g.output)}
    rename: dict[str, str] = {}
    for i, n in enumerate(n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Mul")
                          and (n.op_type != "Mul" or n.name.endswith("__mul"))):
        n.name = f"q{i}"
        if n.op_type != "QuantizeLinear" and n.input[0] in inits and n.output[0] not in graph_io:
            rename[n.output[0]] = f"w{i}"
    for n in g.node:
        for k, t in enumerate(n.input):
            if t in rename:
                n.input[k] = rename[t]
        for k, t in enumerate(n.output):
            if t in rename:
                n.output[k] = rename[t]


def _prune_initializers(g: Any) -> None:
    used = {i for n in g.node for i in n.input} | {v.name for v in g.output}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def run(data: bytes, config: CompactConfig | None = None) -> bytes:
    """``data`` with the exact size savings above applied; outputs are bit-identical."""
    import onnx
    cfg = config or CompactConfig()
    m = onnx.load_from_string(data)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    if cfg.strip_metadata:
        _strip_metadata(g)
    if cfg.drop_zero_points:
        _drop_zero_points(g, inits)
    if cfg.derive_bias_scales:
        _derive_bias_scales(g, inits)
    if cfg.short_names:
        _short_names(g, inits)
    _prune_initializers(g)
    return m.SerializeToString()
