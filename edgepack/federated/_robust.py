"""Robust aggregation: norm clipping, coordinate-wise median and trimmed mean, outlier flags.

Clipping and outlier flags stream like FedAvg (O(model) memory). Median and
trimmed mean cannot: every coordinate's value from every update is needed at
once. :class:`SpillStore` therefore writes each update as a float32 row of a
memory-mapped ``N x P`` file as it arrives and reduces it column block by
column block afterwards. Cost, for N updates of P parameters:

- disk: ``4 * N * P`` bytes (100 updates of a 10M-parameter model: 4 GB);
- RAM while reducing: ``N * BLOCK * 8`` bytes of scratch (a few MB), plus the
  result, plus whatever of the file the OS page cache keeps;
- time: one write of every update, one read back, and an ``O(N)`` selection
  (``np.partition``) per coordinate: ``O(N * P)``, several times FedAvg's.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._aggregate import l2_norm
from ._errors import AggregationError, FederatedConfigError
from ._params import Params, ParamSpec, as_named

__all__ = ["OutlierVerdict", "SpillStore", "clip_scale", "clip_to_norm", "flag_outlier"]

_BLOCK = 1 << 14  # columns per reduction block: N * 16K * 8 B = 128 MB at N = 1000


def clip_scale(norm: float, max_norm: float) -> float:
    """The factor that brings an update of L2 norm ``norm`` within ``max_norm`` (1.0 if it already is)."""
    if max_norm <= 0:
        raise FederatedConfigError(f"max_norm must be > 0, got {max_norm}", where="max_norm")
    return 1.0 if norm <= max_norm else max_norm / norm


def clip_to_norm(params: Mapping[str, np.ndarray] | Sequence[np.ndarray], max_norm: float) -> tuple[Params, float]:
    """``params`` scaled so their joint L2 norm is at most ``max_norm``, and the scale used.

    Streaming aggregators should not call this (it copies the update): pass the
    scale from :func:`clip_scale` to :meth:`RoundAccumulator.fold` instead.
    """
    named = as_named(params)
    scale = clip_scale(l2_norm(named), max_norm)
    return {k: (v * scale).astype(v.dtype) for k, v in named.items()}, scale


@dataclass(frozen=True)
class OutlierVerdict:
    distance: float
    threshold: float | None  # None while warming up
    flagged: bool


def flag_outlier(distance: float, past_distances: Sequence[float], *, z: float = 3.0, warmup: int = 5
                 ) -> OutlierVerdict:
    """Flag an update whose distance from the running mean is unusually large.

    The threshold is ``mean + z * std`` of the distances of updates accepted
    before it; nothing is flagged until ``warmup`` distances are known, since a
    standard deviation from two or three points means little.
    """
    d = np.asarray(past_distances, dtype=np.float64)
    return flag_outlier_by_stats(distance, d.size, float(d.mean()) if d.size else 0.0,
                                 float(d.std()) if d.size else 0.0, z=z, warmup=warmup)


def flag_outlier_by_stats(distance: float, n: int, mean: float, std: float, *, z: float = 3.0, warmup: int = 5
                          ) -> OutlierVerdict:
    """:func:`flag_outlier` from the past distances' count, mean and population std.

    This is what a streaming round uses (``RoundAccumulator.distance_stats``), so
    it never holds the list of distances.
    """
    if n < warmup:
        return OutlierVerdict(distance, None, False)
    threshold = mean + z * std
    return OutlierVerdict(distance, threshold, bool(distance > threshold))


class SpillStore:
    """Updates spilled to a memory-mapped float32 file, for median and trimmed mean.

    Raises:
        AggregationError: if an update does not fit the spec, or more than ``capacity`` arrive.
    """

    def __init__(self, spec: ParamSpec, capacity: int, directory: str | os.PathLike[str] | None = None) -> None:
        if capacity < 1:
            raise FederatedConfigError("capacity must be at least 1", where="capacity")
        self.spec, self.capacity, self.count = spec, capacity, 0
        fd, name = tempfile.mkstemp(prefix="edgepack-spill-", suffix=".f32", dir=directory)
        os.close(fd)
        self.path = Path(name)
        self._rows = np.memmap(self.path, dtype=np.float32, mode="w+", shape=(capacity, max(spec.size, 1)))

    def add(self, params: Mapping[str, np.ndarray] | Sequence[np.ndarray], *, scale: float = 1.0) -> None:
        """Write one update (times ``scale``, e.g. a clip factor) as the next row."""
        if self.count >= self.capacity:
            raise AggregationError(f"spill store is full ({self.capacity} updates)", hint="raise capacity")
        named = as_named(params)
        self.spec.check(named)
        row = self._rows[self.count]
        for t, a, b in self.spec.slices():
            row[a:b] = named[t.name].reshape(-1) * scale if scale != 1.0 else named[t.name].reshape(-1)
        self.count += 1

    def median(self) -> Params:
        """Coordinate-wise median (the mean of the two middle values for even N, as ``np.median``)."""
        return self._reduce(lambda blk: np.median(blk, axis=0))

    def trimmed_mean(self, beta: float) -> Params:
        """Mean after dropping the ``floor(beta * N)`` lowest and highest values of each coordinate.

        Raises:
            FederatedConfigError: unless ``0 <= beta < 0.5``.
        """
        if not 0.0 <= beta < 0.5:
            raise FederatedConfigError(f"beta must be in [0, 0.5), got {beta}", where="beta")
        k = int(math.floor(beta * self.count))
        n = self.count

        def reduce(blk: np.ndarray) -> np.ndarray:
            if k == 0:
                return blk.mean(axis=0)
            part = np.partition(blk, (k, n - k - 1), axis=0)
            return part[k: n - k].mean(axis=0)

        return self._reduce(reduce)

    def _reduce(self, fn: object) -> Params:
        if self.count == 0:
            raise AggregationError("no updates were spilled; there is nothing to aggregate")
        flat = np.empty(self.spec.size, dtype=np.float64)
        for s in range(0, self.spec.size, _BLOCK):
            e = min(s + _BLOCK, self.spec.size)
            blk = np.asarray(self._rows[: self.count, s:e], dtype=np.float64)
            flat[s:e] = fn(blk)  # type: ignore[operator]
        return self.spec.unflatten(flat)

    def close(self) -> None:
        """Delete the spill file."""
        rows = getattr(self, "_rows", None)
        if rows is not None:
            rows._mmap.close()  # type: ignore[attr-defined]
            self._rows = None  # type: ignore[assignment]
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> SpillStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
