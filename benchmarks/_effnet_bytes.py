"""Where an artifact's bytes go: a breakdown by role for ONNX and TFLite files.

ONNX: initializers grouped by what consumes them (weight / bias data, scales, zero points
of ``DequantizeLinear``; activation scale/zero point of ``QuantizeLinear``; float inputs of
other ops), plus node protos, their exporter metadata, ``value_info`` and names.
TFLite: buffers grouped by role (bias = input 2 of its op, else weight) and type, the
per-tensor quantization parameter arrays (scale/zero point), tensor names, the rest.
"""

from __future__ import annotations

import collections

import numpy as np

__all__ = ["onnx_breakdown", "tflite_breakdown"]


def onnx_breakdown(data: bytes) -> dict[str, int]:
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(data)
    g = m.graph
    consumers: dict[str, list[tuple[object, int]]] = collections.defaultdict(list)
    for n in g.node:
        for k, i in enumerate(n.input):
            consumers[i].append((n, k))
    out: collections.Counter[str] = collections.Counter()
    for t in g.initializer:
        a = numpy_helper.to_array(t)
        users = consumers.get(t.name, [])
        role = "unused initializer"
        if users:
            n, k = users[0]
            if n.op_type == "DequantizeLinear":
                fed = [kk for _, kk in consumers.get(n.output[0], [])]
                kind = "bias" if fed and fed[0] == 2 else "weight" if fed and fed[0] == 1 else "activation"
                role = f"{kind} {['data', 'scale', 'zero point'][k]}"
            elif n.op_type == "QuantizeLinear":
                role = f"activation {['(input)', 'scale', 'zero point'][k]} (Q)"
            elif n.op_type == "Mul" and a.dtype == np.float32 and a.ndim == 1:
                role = "weight scale"  # compacted: feeds the bias scale's Mul and the weight's DQ
            else:
                role = f"float input of {n.op_type}" if a.dtype == np.float32 else f"{a.dtype} input of {n.op_type}"
        out[f"{role} [{a.dtype}]"] += len(t.SerializeToString())
    node_bytes = sum(len(n.SerializeToString()) for n in g.node)
    meta = sum(sum(len(p.SerializeToString()) for p in n.metadata_props) for n in g.node)
    out["node metadata (exporter debug info)"] = meta
    out["nodes (ops, attributes, names)"] = node_bytes - meta
    out["value_info"] = sum(len(v.SerializeToString()) for v in g.value_info)
    out["other (graph io, model header)"] = len(data) - sum(out.values())
    return {"total": len(data), **dict(out.most_common())}


def tflite_breakdown(data: bytes) -> dict[str, int]:
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    types = {v: k for k, v in schema.TensorType.__dict__.items() if not k.startswith("_")}
    sg = m.subgraphs[0]
    users: dict[int, list[int]] = collections.defaultdict(list)
    for op in sg.operators:
        for k, t in enumerate(op.inputs):
            if t >= 0:
                users[t].append(k)
    out: collections.Counter[str] = collections.Counter()
    seen: set[int] = set()
    qparams = 0
    for i, t in enumerate(sg.tensors):
        q = t.quantization
        if q is not None:
            qparams += sum(np.asarray(a).nbytes for a in (q.scale, q.zeroPoint, q.min, q.max) if a is not None)
        b = m.buffers[t.buffer]
        # ai-edge-quantizer writes large buffers after the flatbuffer (offset/size) instead of inline
        n = len(b.data) if b.data is not None else int(b.size or 0) if (b.offset or 0) > 1 else 0
        if n == 0 or t.buffer in seen:
            continue
        seen.add(t.buffer)
        role = "bias" if 2 in users.get(i, []) else "weight" if users.get(i) else "unused buffer"
        out[f"{role} data [{types[t.type]}]"] += n
    out["quantization parameters (scale/zero point arrays)"] = qparams
    out["tensor names"] = sum(len(t.name or b"") for t in sg.tensors)
    out["other (ops, tensor tables, signatures, metadata)"] = len(data) - sum(out.values())
    return {"total": len(data), **dict(out.most_common())}
