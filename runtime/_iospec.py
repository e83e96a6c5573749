"""The manifest's I/O contract, compiled once into cheap per-call checks.

``predict`` sits on the hot path of every inference, so everything that can be
decided from the manifest (dtype objects, fixed dims, broadcast-ready
normalization constants) is decided here at load time, and the per-call check
is a handful of attribute compares that never copies a correct input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import InputValidationError

__all__ = ["IOSpec", "TensorSpec", "parse_io"]

_LAYOUT_CHANNEL_AXIS = {"NCHW": 1, "NHWC": -1, "NCW": 1, "NWC": -1, "NC": 1, "NCDHW": 1, "NDHWC": -1}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the manifest declares it."""

    name: str
    shape: tuple[int | str, ...]
    dtype: np.dtype
    layout: str | None = None
    mean: np.ndarray | None = None      # broadcast-ready, or None
    inv_std: np.ndarray | None = None
    range_min: float | None = None
    range_max: float | None = None
    reference_edges: np.ndarray | None = None
    reference_probs: np.ndarray | None = None
    fixed_dims: tuple[tuple[int, int], ...] = ()   # derived: (axis, size) of every concrete dim

    def __post_init__(self) -> None:
        fixed = tuple((i, d) for i, d in enumerate(self.shape) if isinstance(d, int) and d >= 0)
        object.__setattr__(self, "fixed_dims", fixed)


@dataclass(frozen=True)
class IOSpec:
    task: str
    labels: tuple[str, ...] | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)


def _dtype(v: object, where: str) -> np.dtype:
    try:
        return np.dtype(str(v))
    except TypeError as e:
        raise InputValidationError(f"{where}: unknown dtype {v!r}", where=where,
                                   hint="use a numpy dtype name such as float32") from e


def _norm(norm: Any, shape: tuple, layout: str | None, where: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not norm:
        return None, None
    mean = np.asarray(norm.get("mean", 0.0), dtype=np.float32)
    std = np.asarray(norm.get("std", 1.0), dtype=np.float32)
    if np.any(std == 0):
        raise InputValidationError(f"{where}.normalization.std has a zero", where=where)
    if mean.ndim == 0 and std.ndim == 0:
        return mean, (1.0 / std).astype(np.float32)
    axis = _LAYOUT_CHANNEL_AXIS.get(layout or "", 1)
    rank = len(shape)
    bshape = [1] * rank
    bshape[axis] = -1
    try:
        return mean.reshape(bshape), (1.0 / std).astype(np.float32).reshape(bshape)
    except ValueError as e:
        raise InputValidationError(f"{where}.normalization does not fit shape {shape}", where=where) from e


def _tensor(d: object, where: str, is_input: bool) -> TensorSpec:
    if not isinstance(d, dict) or not isinstance(d.get("name"), str):
        raise InputValidationError(f"{where} must be an object with a name", where=where,
                                   hint="rebuild the bundle; see the io contract in docs/runtime.md")
    shape = tuple(d.get("shape") or ())
    for dim in shape:
        if not isinstance(dim, (int, str)) or isinstance(dim, bool):
            raise InputValidationError(f"{where}.shape has a bad dim {dim!r}", where=where)
    layout = d.get("layout")
    mean = inv_std = None
    rmin = rmax = None
    edges = probs = None
    if is_input:
        mean, inv_std = _norm(d.get("normalization"), shape, layout, where)
        rng = d.get("range") or {}
        rmin, rmax = rng.get("min"), rng.get("max")
        ref = d.get("reference")
        if ref:
            edges = np.asarray(ref["edges"], dtype=np.float64)
            probs = np.asarray(ref["probs"], dtype=np.float64)
            if edges.ndim != 1 or probs.shape != (edges.size - 1,):
                raise InputValidationError(f"{where}.reference needs len(edges) == len(probs) + 1", where=where)
    return TensorSpec(d["name"], shape, _dtype(d.get("dtype", "float32"), where), layout,
                      mean, inv_std, rmin, rmax, edges, probs)


def parse_io(io: Mapping[str, Any]) -> IOSpec:
    """Compile ``manifest.io`` into an ``IOSpec``.

    Raises:
        InputValidationError: if the io block is malformed.
    """
    ins, outs = io.get("inputs"), io.get("outputs")
    if not isinstance(ins, list) or not ins or not isinstance(outs, list) or not outs:
        raise InputValidationError("manifest.io needs non-empty inputs and outputs lists", where="manifest.io",
                                   hint="rebuild the bundle with a converter that fills io")
    labels = io.get("labels")
    return IOSpec(
        task=str(io.get("task", "other")),
        labels=tuple(str(x) for x in labels) if labels else None,
        inputs=tuple(_tensor(d, f"manifest.io.inputs[{i}]", True) for i, d in enumerate(ins)),
        outputs=tuple(_tensor(d, f"manifest.io.outputs[{i}]", False) for i, d in enumerate(outs)),
    )


def _layout_hint(spec: TensorSpec, shape: tuple[int, ...]) -> str:
    if spec.layout in ("NCHW", "NHWC") and len(shape) == 4 and len(spec.shape) == 4:
        fixed = [d for d in spec.shape[1:] if isinstance(d, int)]
        if sorted(fixed) == sorted(shape[1:len(fixed) + 1]) and list(shape[1:]) != list(spec.shape[1:]):
            perm = "(0, 3, 1, 2)" if spec.layout == "NCHW" else "(0, 2, 3, 1)"
            return f"the array looks like the other layout; the model wants {spec.layout}: use x.transpose{perm}"
    return f"pass an array of shape {list(spec.shape)} ({spec.layout or 'no layout'})"


def check_array(spec: TensorSpec, x: object, bound: dict[str, int] | None) -> np.ndarray:
    """Return ``x`` itself if it matches ``spec``; never copies.

    Raises:
        InputValidationError: naming the input and what was expected.
    """
    if type(x) is not np.ndarray and not isinstance(x, np.ndarray):
        raise InputValidationError(
            f"input {spec.name!r} must be a numpy array, got {type(x).__name__}", where=spec.name,
            hint=f"wrap it: np.asarray(x, dtype=np.{spec.dtype.name})")
    if x.dtype != spec.dtype:
        raise InputValidationError(
            f"input {spec.name!r} has dtype {x.dtype}; expected {spec.dtype}", where=spec.name,
            hint=f"convert it once with x.astype(np.{spec.dtype.name})")
    shape = x.shape
    if len(shape) != len(spec.shape):
        raise InputValidationError(
            f"input {spec.name!r} has shape {list(shape)}; expected rank {len(spec.shape)} {list(spec.shape)}",
            where=spec.name, hint=_layout_hint(spec, shape))
    for i, d in spec.fixed_dims:
        if shape[i] != d:
            raise InputValidationError(
                f"input {spec.name!r} has shape {list(shape)}; expected {list(spec.shape)} (dim {i} must be {d})",
                where=spec.name, hint=_layout_hint(spec, shape))
    if bound is not None:
        for i, sym in enumerate(spec.shape):
            if isinstance(sym, str) and bound.setdefault(sym, shape[i]) != shape[i]:
                raise InputValidationError(
                    f"input {spec.name!r} dim {i} ({sym!r}) is {shape[i]}, but another input bound "
                    f"{sym!r} to {bound[sym]}", where=spec.name, hint="symbolic dims must agree across inputs")
    return x


def gather_inputs(specs: tuple[TensorSpec, ...], inputs: object) -> list[np.ndarray]:
    """Accept one array, a sequence in manifest order, or a dict by name.

    Raises:
        InputValidationError: for a missing, unknown or mismatched input.
    """
    n = len(specs)
    if n == 1 and type(inputs) is np.ndarray:
        return [check_array(specs[0], inputs, None)]
    bound: dict[str, int] | None = {} if n > 1 else None
    if isinstance(inputs, Mapping):
        unknown = set(inputs) - {s.name for s in specs}
        if unknown:
            raise InputValidationError(f"unknown input(s) {sorted(unknown)}; the model takes "
                                       f"{[s.name for s in specs]}", where=sorted(unknown)[0])
        out = []
        for s in specs:
            if s.name not in inputs:
                raise InputValidationError(f"input {s.name!r} is missing", where=s.name,
                                           hint=f"pass a dict with keys {[t.name for t in specs]}")
            out.append(check_array(s, inputs[s.name], bound))
        return out
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    if not isinstance(inputs, Sequence) or len(inputs) != n:
        raise InputValidationError(f"expected {n} input(s) {[s.name for s in specs]}", where="predict",
                                   hint="pass one array, a list in manifest order, or a dict by name")
    return [check_array(s, x, bound) for s, x in zip(specs, inputs, strict=False)]
