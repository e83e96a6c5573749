"""The model's I/O spec: what ``manifest.io`` records and what data must fit."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ._errors import DataMismatchError

__all__ = ["IOSpec", "TensorSpec"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    #: symbolic dims are strings ("batch")
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    layout: str | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def concrete(self, batch: int) -> tuple[int, ...]:
        """The shape with every symbolic dim set to ``batch`` (only the first may be symbolic)."""
        return tuple(batch if isinstance(d, str) or d is None or d < 0 else int(d) for d in self.shape)

    def check(self, x: np.ndarray, where: str) -> None:
        """Raises: DataMismatchError when ``x`` does not fit this input."""
        want = self.shape[1:]
        got = tuple(x.shape[1:])
        fits = len(got) == len(want) and all(isinstance(w, str) or w == g for w, g in zip(want, got, strict=False))
        if not fits:
            raise DataMismatchError(
                f"data has per-sample shape {got}; input '{self.name}' expects {tuple(want)}",
                where=where, hint="reshape the data (first axis = samples) or fix [input] shape in the recipe")
        # float64 from numpy is the usual mismatch and is safe to cast; int data given for floats is not
        both_float = np.issubdtype(x.dtype, np.floating) and np.issubdtype(np.dtype(self.dtype), np.floating)
        if np.dtype(x.dtype) != np.dtype(self.dtype) and not both_float:
            raise DataMismatchError(f"data dtype is {x.dtype}; input '{self.name}' expects {self.dtype}",
                                        where=where, hint=f"save the data as {self.dtype}")


@dataclass(frozen=True)
class IOSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    task: str = "classification"
    labels: tuple[str, ...] = ()
    #: training-range stats per input (filled from calibration data)
    stats: tuple[dict[str, Any] | None, ...] = field(default=())

    def with_stats(self, xs: list[np.ndarray]) -> IOSpec:
        """Record each input's range and a 10-bin histogram (the runtime's drift reference)."""
        stats = []
        for x in xs:
            flat = np.asarray(x, dtype=np.float64).ravel()
            lo, hi = float(flat.min()), float(flat.max())
            edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 11)
            counts, _ = np.histogram(flat, bins=edges)
            stats.append({"range": {"min": lo, "max": hi},
                          "reference": {"edges": [float(e) for e in edges],
                                        "probs": [float(c) / max(1, flat.size) for c in counts]}})
        return replace(self, stats=tuple(stats))

    def to_manifest(self) -> dict[str, Any]:
        """``manifest.io`` exactly as in the converters/runtime contract."""
        ins = []
        for i, t in enumerate(self.inputs):
            st = self.stats[i] if i < len(self.stats) and self.stats[i] else {}
            norm = {"mean": list(t.mean), "std": list(t.std)} if t.mean and t.std else None
            ins.append({"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "layout": t.layout,
                        "normalization": norm, "range": st.get("range"), "reference": st.get("reference")})
        outs = [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.outputs]
        return {"task": self.task, "labels": list(self.labels) or None, "inputs": ins, "outputs": outs}
