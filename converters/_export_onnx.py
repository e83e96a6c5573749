"""Export the source model to fp32 ONNX with a dynamic batch dimension.

torch: ``torch.onnx.export(dynamo=True)`` (onnxscript). Keras: Keras' own
``model.export(format="onnx")``, which drives tf2onnx (Keras patches tf2onnx
for numpy 2). SavedModel: tf2onnx directly. ONNX: the source itself.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._errors import UnsupportedError, UnsupportedOpError
from ._load import LoadedModel
from ._spec import IOSpec

__all__ = ["EXPORTERS", "OnnxExportConfig", "run"]


@dataclass(frozen=True)
class OnnxExportConfig:
    opset: int = 18
    dynamic_batch: bool = True


_OP_PATTERNS = (
    re.compile(r"(aten::[A-Za-z0-9_.]+)"),
    re.compile(r"torch\.ops\.(aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)"),
    re.compile(r"OpType: ([A-Za-z0-9_]+)"),
    re.compile(r"op(?:erator)? '?([A-Za-z][A-Za-z0-9_:.]+)'? is not supported"),
)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def find_op(message: str) -> str | None:
    """The operator an exporter complains about, if its message names one."""
    for pat in _OP_PATTERNS:
        m = pat.search(message)
        if m:
            return m.group(1)
    return None


def _export_torch(m: LoadedModel, spec: IOSpec, cfg: OnnxExportConfig) -> bytes:
    import torch
    sample = tuple(torch.zeros(t.concrete(2), dtype=getattr(torch, t.dtype)) for t in spec.inputs)
    dyn = None
    if cfg.dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        dyn = tuple({0: batch} for _ in spec.inputs)
    try:
        prog = torch.onnx.export(
            m.model, sample, dynamo=True, opset_version=cfg.opset, verbose=False,
            input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
            dynamic_shapes=dyn, optimize=True,
        )
    except Exception as e:  # the exporter raises many internal types; name the op when we can
        _raise_export_error(e, "onnx")
    return prog.model_proto.SerializeToString()


def _raise_export_error(e: Exception, target: str) -> None:
    msg = _ANSI.sub("", f"{type(e).__name__}: {e}")
    op = find_op(msg)
    first = msg.strip().splitlines()[0][:400]
    if op:
        raise UnsupportedOpError(f"operator {op} cannot be expressed in {target}: {first}", op=op, target=target,
                                 hint=f"replace {op} with supported ops, or drop the {target} target") from e
    raise UnsupportedError(f"export to {target} failed: {first}", hint="rerun with --debug for the full trace") from e


def _export_keras(m: LoadedModel, spec: IOSpec, cfg: OnnxExportConfig) -> bytes:
    model = m.model
    x = np.zeros(spec.inputs[0].concrete(1), dtype=spec.inputs[0].dtype)
    model(x, training=False)  # Keras refuses to export a model that was never called
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "model.onnx"
        try:
            model.export(str(out), format="onnx", verbose=False, opset_version=cfg.opset)
        except ImportError as e:
            raise UnsupportedError("Keras ONNX export needs tf2onnx", hint="pip install tf2onnx") from e
        except Exception as e:  # tf2onnx raises its own types for unsupported TF ops
            _raise_export_error(e, "onnx")
        return out.read_bytes()


def _export_saved_model(m: LoadedModel, spec: IOSpec, cfg: OnnxExportConfig) -> bytes:
    import tensorflow as tf
    try:
        import tf2onnx
        from keras.src.export.tf2onnx_lib import patch_tf2onnx
    except ImportError as e:
        raise UnsupportedError("SavedModel to ONNX needs tf2onnx", hint="pip install tf2onnx") from e
    patch_tf2onnx()  # tf2onnx 1.17 still uses numpy 1 aliases; Keras ships the fix
    sig = [tf.TensorSpec([None if isinstance(d, str) else d for d in t.shape], t.dtype, name=n)
           for t, n in zip(spec.inputs, m.input_names, strict=False)]
    names, fn = m.input_names, m.model

    @tf.function
    def serve(*args: object) -> object:  # tf2onnx wants a tf.function, a signature is a ConcreteFunction
        out = fn(**dict(zip(names, args, strict=False)))
        return [out[k] for k in sorted(out)]  # the reference runner orders outputs the same way

    try:
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=sig, opset=cfg.opset)
    except Exception as e:  # tf2onnx raises its own types for unsupported TF ops
        _raise_export_error(e, "onnx")
    return proto.SerializeToString()


def _export_onnx(m: LoadedModel, spec: IOSpec, cfg: OnnxExportConfig) -> bytes:
    return m.model.SerializeToString()


#: source kind -> exporter
EXPORTERS: dict[str, Callable[[LoadedModel, IOSpec, OnnxExportConfig], bytes]] = {
    "torch": _export_torch,
    "keras": _export_keras,
    "saved_model": _export_saved_model,
    "onnx": _export_onnx,
}


def run(model: LoadedModel, spec: IOSpec, config: OnnxExportConfig | None = None) -> bytes:
    """The fp32 ONNX bytes for ``model``.

    Raises:
        UnsupportedOpError: the exporter names an op ONNX cannot express.
        UnsupportedError: any other export failure, or no exporter for the kind.
    """
    cfg = config or OnnxExportConfig()
    fn = EXPORTERS.get(model.kind)
    if fn is None:
        raise UnsupportedError(f"no ONNX exporter for {model.kind} models")
    return fn(model, spec, cfg)
