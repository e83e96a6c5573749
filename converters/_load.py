"""Load the source model: torch (``.pt2``, ``pkg.mod:factory``, live
``nn.Module``), Keras (``.keras``, SavedModel directory, live ``keras.Model``)
or ONNX (``.onnx``), and run it as the parity reference.

The loader registry maps a kind to a probe and a loader (STYLE rule 7).
Heavy frameworks are imported only when a model of their kind shows up.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import ModelLoadError

__all__ = ["LOADERS", "LoadConfig", "LoadedModel", "predict", "run"]


@dataclass(frozen=True)
class LoadConfig:
    #: run the reference model in batches of this many samples
    batch: int = 64


@dataclass
class LoadedModel:
    kind: str  # torch | keras | saved_model | onnx
    model: Any
    source: str
    sha256: str
    #: what the file itself says about its I/O (names, shapes), when it says anything
    input_names: list[str] = field(default_factory=list)
    input_shapes: list[tuple[Any, ...]] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    layout: str | None = None
    path: Path | None = None
    #: objects that must outlive ``model`` (a SavedModel signature dies with its loaded object)
    keepalive: Any = None


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(path)).encode())
                h.update(p.read_bytes())
    else:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _arrays_sha(arrays: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _is_torch_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, (torch.nn.Module, torch.export.ExportedProgram))


def _is_keras_model(obj: Any) -> bool:
    mod = type(obj).__module__
    if not (mod.startswith("keras") or mod.startswith("tensorflow") or mod.startswith("tf_keras")):
        return False
    import keras
    return isinstance(obj, keras.Model)


def _torch_live(obj: Any, source: str) -> LoadedModel:
    import torch
    shapes: list[tuple[Any, ...]] = []
    if isinstance(obj, torch.export.ExportedProgram):
        ep = obj
        specs = [s for s in ep.graph_signature.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
        nodes = {n.name: n for n in ep.graph.nodes}
        for s in specs:
            val = nodes[s.arg.name].meta.get("val")
            if val is not None:
                shapes.append(tuple(d if isinstance(d, int) else "batch" for d in val.shape))
        if shapes and shapes[0] and isinstance(shapes[0][0], int):
            # the program's guards pin the batch size: parity batches and a dynamic-batch ONNX would both fail
            raise ModelLoadError(
                f"the ExportedProgram has a static batch dimension ({shapes[0][0]})", where=source,
                hint="export with a symbolic batch: torch.export.export(m, args, "
                     "dynamic_shapes=({0: torch.export.Dim('batch')},)), or pass 'pkg.mod:factory'")
        obj = ep.module()
        sha = _arrays_sha([v.detach().numpy() for v in ep.state_dict.values()])
    else:
        obj.eval()
        sha = _arrays_sha([v.detach().cpu().numpy() for v in obj.state_dict().values()])
    return LoadedModel("torch", obj, source, sha, input_shapes=shapes, layout="NCHW")


def _keras_live(obj: Any, source: str) -> LoadedModel:
    names, shapes = [], []
    for t in getattr(obj, "inputs", None) or []:
        names.append(str(getattr(t, "name", "input")).split(":")[0])
        shapes.append(tuple("batch" if d is None else int(d) for d in t.shape))
    return LoadedModel("keras", obj, source, _arrays_sha([np.asarray(w) for w in obj.get_weights()]),
                       input_names=names, input_shapes=shapes, layout="NHWC")


def _load_pt2(path: Path) -> LoadedModel:
    import torch
    try:
        ep = torch.export.load(str(path))
    except Exception as e:  # torch raises many kinds (zip, pickle, version) for a bad file
        raise ModelLoadError(f"{path.name} is not a loadable torch ExportedProgram: {type(e).__name__}: {e}",
                             where=str(path), hint="save it with torch.export.save(torch.export.export(m, args), path)") from e
    m = _torch_live(ep, str(path))
    m.sha256, m.path = _file_sha(path), path
    return m


def _load_keras_file(path: Path) -> LoadedModel:
    import keras
    try:
        model = keras.models.load_model(str(path), compile=False)
    except Exception as e:  # keras raises ValueError/OSError/zip errors for a bad file
        raise ModelLoadError(f"{path.name} is not a loadable Keras model: {type(e).__name__}: {e}",
                             where=str(path), hint="save it with model.save('model.keras')") from e
    m = _keras_live(model, str(path))
    m.sha256, m.path = _file_sha(path), path
    return m


def _load_saved_model(path: Path) -> LoadedModel:
    import tensorflow as tf
    try:
        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures["serving_default"]
    except Exception as e:  # TF raises OSError/KeyError/its own errors for a bad directory
        raise ModelLoadError(f"{path} is not a SavedModel with a 'serving_default' signature: {e}",
                             where=str(path), hint="export it with model.export(dir) or tf.saved_model.save") from e
    specs = fn.structured_input_signature[1]
    names = sorted(specs)
    shapes = [tuple("batch" if d is None else int(d) for d in specs[n].shape) for n in names]
    outs = sorted(fn.structured_outputs)
    return LoadedModel("saved_model", fn, str(path), _file_sha(path), names, shapes, outs, "NHWC", path, loaded)


def _load_onnx(path: Path) -> LoadedModel:
    import onnx
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises DecodeError/ValidationError for a bad file
        raise ModelLoadError(f"{path.name} is not a valid ONNX model: {type(e).__name__}: {e}", where=str(path),
                             hint="re-export it, or check it with onnx.checker.check_model") from e
    inits = {i.name for i in model.graph.initializer}
    ins = [i for i in model.graph.input if i.name not in inits]
    shapes = [tuple((d.dim_param or "batch") if not d.dim_value else d.dim_value
                    for d in i.type.tensor_type.shape.dim) for i in ins]
    return LoadedModel("onnx", model, str(path), _file_sha(path), [i.name for i in ins], shapes,
                       [o.name for o in model.graph.output], "NCHW", path)


def _load_factory(ref: str) -> LoadedModel:
    mod_name, _, attr = ref.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise ModelLoadError(f"cannot import {ref}: {e}", where=ref,
                             hint="use 'package.module:factory' with the package importable (PYTHONPATH)") from e
    obj = factory()
    if not _is_torch_module(obj):
        raise ModelLoadError(f"{ref}() returned {type(obj).__name__}, not a torch.nn.Module", where=ref)
    return _torch_live(obj, ref)


#: file suffix -> loader; a SavedModel is a directory holding saved_model.pb
LOADERS: dict[str, Callable[[Path], LoadedModel]] = {
    ".pt2": _load_pt2,
    ".keras": _load_keras_file,
    ".onnx": _load_onnx,
    "saved_model": _load_saved_model,
}


def run(source: Any, config: LoadConfig | None = None) -> LoadedModel:
    """Load a model from a path, a ``pkg.mod:factory`` string, or a live object.

    Raises:
        ModelLoadError: the file is unreadable, the wrong type, or not a model.
    """
    if _is_torch_module(source):
        return _torch_live(source, f"<{type(source).__name__}>")
    if _is_keras_model(source):
        return _keras_live(source, f"<{type(source).__name__}>")
    if isinstance(source, str) and ":" in source and not os.path.exists(source) and "/" not in source:
        return _load_factory(source)
    if not isinstance(source, (str, os.PathLike)):
        raise ModelLoadError(f"cannot build from a {type(source).__name__}",
                             hint="pass a path, 'pkg.mod:factory', a torch.nn.Module or a keras.Model")
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"model {path} does not exist", where=str(path))
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"model {path} is not readable", where=str(path), hint="check its permissions")
    key = "saved_model" if path.is_dir() and (path / "saved_model.pb").exists() else path.suffix.lower()
    loader = LOADERS.get(key)
    if loader is None:
        raise ModelLoadError(f"{path.name}: unknown model type", where=str(path),
                             hint="use a .pt2 (torch.export.save), .keras, a SavedModel directory, .onnx, "
                                  "or 'pkg.mod:factory'")
    return loader(path)


def _as_list(out: Any) -> list[np.ndarray]:
    if isinstance(out, dict):
        return [np.asarray(out[k]) for k in sorted(out)]
    if isinstance(out, (list, tuple)):
        return [np.asarray(o) for o in out]
    return [np.asarray(out)]


def _forward(m: LoadedModel, xs: list[np.ndarray]) -> list[np.ndarray]:
    if m.kind == "torch":
        import torch
        with torch.no_grad():
            out = m.model(*[torch.from_numpy(np.ascontiguousarray(x)) for x in xs])
        out = out if not isinstance(out, torch.Tensor) else [out]
        return [o.detach().cpu().numpy() for o in (out.values() if isinstance(out, dict) else out)]
    if m.kind == "keras":
        return [np.asarray(o) for o in _as_list(m.model(xs[0] if len(xs) == 1 else xs, training=False))]
    if m.kind == "saved_model":
        import tensorflow as tf
        out = m.model(**{n: tf.constant(x) for n, x in zip(m.input_names, xs, strict=False)})
        return [out[k].numpy() for k in m.output_names]
    if m.kind == "onnx":
        sess = m.__dict__.setdefault("_session", _onnx_session(m.model))
        return list(sess.run(None, dict(zip(m.input_names, xs, strict=False))))
    raise ModelLoadError(f"no reference runner for kind {m.kind!r}")


def _onnx_session(model: Any) -> Any:
    import onnxruntime as ort
    so = ort.SessionOptions()
    # the reference must be the graph as written, not an optimised variant of it
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def predict(m: LoadedModel, xs: list[np.ndarray], config: LoadConfig | None = None) -> list[np.ndarray]:
    """Run the ORIGINAL model on ``xs`` (one array per input) in batches."""
    b = (config or LoadConfig()).batch
    n = xs[0].shape[0]
    parts = [_forward(m, [x[i:i + b] for x in xs]) for i in range(0, n, b)]
    return [np.concatenate([p[k] for p in parts]).astype(np.float32, copy=False) for k in range(len(parts[0]))]
