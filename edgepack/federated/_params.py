"""The parameter spec: names, shapes and dtypes of a model's trainable tensors.

Aggregators work on one flat float64 vector, so a spec maps each named tensor
to a slice ``[offset, offset + size)`` of it. Names keep their order, which is
the order of the flat vector and of Flower's ``NDArrays`` lists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ._errors import AggregationError

__all__ = ["Params", "ParamSpec"]

Params = dict[str, np.ndarray]
"""Named tensors, in spec order."""

# Only real floating dtypes can be averaged; ints (e.g. step counters) cannot.
_FLOAT_DTYPES = ("float16", "float32", "float64")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)  # not np.prod: ~20x slower, and folds call this per update

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes and dtypes of a model's parameters, in a fixed order.

    Raises:
        AggregationError: on duplicate names, negative dims or a non-float dtype.
    """

    tensors: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            raise AggregationError("parameter names must be unique", where="ParamSpec")
        for t in self.tensors:
            if t.dtype not in _FLOAT_DTYPES:
                raise AggregationError(f"tensor {t.name!r} has dtype {t.dtype}; only {_FLOAT_DTYPES} can be averaged",
                                       where=t.name, hint="leave non-float tensors out of the spec")
            if any((not isinstance(d, int)) or d < 0 for d in t.shape):
                raise AggregationError(f"tensor {t.name!r} has an invalid shape {t.shape}", where=t.name)

    @classmethod
    def from_params(cls, params: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> ParamSpec:
        """The spec of ``params`` (a name->array mapping, or a list named ``"0"``, ``"1"``, ...)."""
        named = as_named(params)
        return cls(tuple(TensorSpec(k, tuple(int(d) for d in v.shape), str(v.dtype)) for k, v in named.items()))

    # The spec is frozen, so what is derived from it is computed once: a fold checks and slices
    # by these on every update (cached_property writes the instance dict, which frozen allows).
    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    @cached_property
    def _dtypes(self) -> tuple[np.dtype, ...]:
        return tuple(np.dtype(t.dtype) for t in self.tensors)

    @cached_property
    def _slices(self) -> tuple[tuple[TensorSpec, int, int], ...]:
        out, off = [], 0
        for t in self.tensors:
            out.append((t, off, off + t.size))
            off += t.size
        return tuple(out)

    @property
    def size(self) -> int:
        """Total number of scalars."""
        return sum(t.size for t in self.tensors)

    @property
    def nbytes(self) -> int:
        """Bytes of one model in its own dtypes (the "model size" of the memory targets)."""
        return sum(t.size * np.dtype(t.dtype).itemsize for t in self.tensors)

    def slices(self) -> tuple[tuple[TensorSpec, int, int], ...]:
        """``(tensor, start, end)`` of each tensor in the flat vector."""
        return self._slices

    def to_dict(self) -> dict[str, Any]:
        return {"tensors": [t.to_dict() for t in self.tensors]}

    @classmethod
    def from_dict(cls, d: object, *, where: str = "spec") -> ParamSpec:
        """Raises:
            AggregationError: if ``d`` is not a spec dict.
        """
        try:
            items = d["tensors"]  # type: ignore[index]
            return cls(tuple(TensorSpec(str(t["name"]), tuple(int(x) for x in t["shape"]), str(t["dtype"]))
                             for t in items))
        except (KeyError, TypeError, ValueError) as e:
            raise AggregationError(f"not a parameter spec: {e}", where=where) from e

    def mismatch(self, params: Mapping[str, np.ndarray]) -> str | None:
        """Why ``params`` does not fit this spec, or None if it fits exactly."""
        if tuple(params) != self.names:
            missing = [n for n in self.names if n not in params]
            extra = [n for n in params if n not in self.names]
            if missing or extra:
                return f"tensor names differ: missing {missing[:5]}, unexpected {extra[:5]}"
            return "tensor order differs from the base model"
        for t, dt in zip(self.tensors, self._dtypes, strict=True):
            a = params[t.name]
            if not isinstance(a, np.ndarray):
                return f"{t.name}: not a numpy array"
            if a.shape != t.shape:
                return f"{t.name}: shape {a.shape} != base {t.shape}"
            if a.dtype != dt:  # unequal for another byte order too ('>f4' is not the base's float32)
                return f"{t.name}: dtype {a.dtype} != base {t.dtype}"
        return None

    def check(self, params: Mapping[str, np.ndarray], *, where: str = "update") -> None:
        """Raises:
            AggregationError: if ``params`` does not fit this spec.
        """
        why = self.mismatch(params)
        if why is not None:
            raise AggregationError(f"parameters do not fit the spec: {why}", where=where,
                                   hint="send tensors with the base model's names, shapes and dtypes")

    def unflatten(self, vec: np.ndarray, *, copy: bool = True) -> Params:
        """Split a flat vector into named tensors in their spec dtypes."""
        out: Params = {}
        for t, a, b in self.slices():
            out[t.name] = vec[a:b].reshape(t.shape).astype(t.dtype, copy=copy)
        return out


def as_named(params: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> Params:
    """A name->array dict; a plain list (Flower's ``NDArrays``) is named by index."""
    if isinstance(params, Mapping):
        return dict(params)
    return {str(i): a for i, a in enumerate(params)}
