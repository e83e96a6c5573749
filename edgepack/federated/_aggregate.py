"""Streaming, weighted FedAvg with a float64 accumulator, persistable to disk.

Each update is folded in as it arrives, so memory is the accumulator (8 bytes
per parameter, i.e. 2x a float32 model) plus a 256 KB scratch buffer, however
many updates there are. Folding goes chunk by chunk through that scratch buffer
instead of ``acc += w * x``: the bare form allocates a model-sized temporary for
every update, and the chunks stay in cache (see benchmarks/RESULTS.md).

The accumulator remembers which update ids it has folded, and that list is
saved in the same atomic file as the sums, so after a crash a server reloads it
and a retried update is refused as already counted, never counted twice.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import AccumulatorStateError, AggregationError
from ._params import Params, ParamSpec, as_named
from ._state import load_state, save_state

__all__ = ["FoldRecord", "RoundAccumulator", "fedavg", "l2_norm"]

CHUNK = 1 << 15  # elements: 256 KB of float64 scratch, stays in L2; larger chunks were no faster (measured)
_KIND = "round-accumulator"


@dataclass(frozen=True)
class FoldRecord:
    """What was folded for one accepted update (kept for audit and DP accounting)."""

    update_id: str
    weight: float
    scale: float = 1.0
    distance: float | None = None  # L2 distance from the running mean when it arrived
    norm: float | None = None  # L2 norm before ``scale``; DP uses it to prove every update was clipped

    def to_dict(self) -> dict[str, Any]:
        return {"update_id": self.update_id, "weight": self.weight, "scale": self.scale,
                "distance": self.distance, "norm": self.norm}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FoldRecord:
        dist, norm = d.get("distance"), d.get("norm")
        return cls(str(d["update_id"]), float(d["weight"]), float(d.get("scale", 1.0)),
                   None if dist is None else float(dist), None if norm is None else float(norm))


def _chunks(n: int) -> Iterable[tuple[int, int]]:
    for s in range(0, n, CHUNK):
        yield s, min(s + CHUNK, n)


def l2_norm(params: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> float:
    """The L2 norm of all tensors together, summed in float64 without a full-size temporary."""
    total = 0.0
    for a in as_named(params).values():
        flat = a.reshape(-1)
        for s, e in _chunks(flat.size):
            c = flat[s:e].astype(np.float64)
            total += float(np.dot(c, c))
    return math.sqrt(total)


class RoundAccumulator:
    """Weighted running sum of updates for one round: ``sum(w_i * s_i * x_i) / sum(w_i)``.

    ``w_i`` is the weight (the sample count for FedAvg) and ``s_i`` a scale a
    robust policy applied (norm clipping); ``s_i`` is 1 for an unclipped update.

    Raises:
        AggregationError: from :meth:`fold` if an update does not fit the spec or a weight is bad.
    """

    def __init__(self, spec: ParamSpec) -> None:
        self.spec = spec
        self._acc = np.zeros(spec.size, dtype=np.float64)
        self._buf = np.empty(min(CHUNK, max(spec.size, 1)), dtype=np.float64)
        self.weight_sum = 0.0
        self.records: list[FoldRecord] = []
        self._ids: set[str] = set()
        self._consumed = False

    @property
    def count(self) -> int:
        return len(self.records)

    @property
    def accepted_ids(self) -> list[str]:
        return [r.update_id for r in self.records]

    def __contains__(self, update_id: str) -> bool:
        return update_id in self._ids

    def fold(self, update_id: str, params: Mapping[str, np.ndarray] | Sequence[np.ndarray], weight: float,
             *, scale: float = 1.0, distance: float | None = None, norm: float | None = None) -> bool:
        """Add ``weight * scale * params`` to the sum.

        Returns False (and changes nothing) if ``update_id`` was already folded,
        so a retried upload is idempotent.

        Raises:
            AggregationError: if the params do not fit the spec, the weight is not
                positive and finite, or the accumulator was finalized.
        """
        self._check_open()
        if update_id in self._ids:
            return False
        if not (math.isfinite(weight) and weight > 0) or not (math.isfinite(scale) and scale >= 0):
            raise AggregationError(f"weight {weight} / scale {scale} must be finite and positive",
                                   where=update_id)
        named = as_named(params)
        self.spec.check(named, where=update_id)
        ws = float(weight) * float(scale)
        acc, buf = self._acc, self._buf
        for t, a, _ in self.spec.slices():
            flat = named[t.name].reshape(-1)
            for s, e in _chunks(flat.size):
                tmp = buf[: e - s]
                # Cast, scale, add as three contiguous passes over a cached chunk: ~10% faster
                # than one multiply with dtype=float64, whose buffered cast is slower (measured).
                np.copyto(tmp, flat[s:e])
                tmp *= ws
                acc[a + s: a + e] += tmp
        self.weight_sum += float(weight)
        self.records.append(FoldRecord(update_id, float(weight), float(scale), distance, norm))
        self._ids.add(update_id)
        return True

    def distance_to_mean(self, params: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> float | None:
        """L2 distance of ``params`` from the current weighted mean (None before the first fold)."""
        self._check_open()
        if self.weight_sum == 0:
            return None
        named = as_named(params)
        self.spec.check(named)
        total, inv = 0.0, 1.0 / self.weight_sum
        for t, a, _ in self.spec.slices():
            flat = named[t.name].reshape(-1)
            for s, e in _chunks(flat.size):
                tmp = self._buf[: e - s]
                np.multiply(self._acc[a + s: a + e], -inv, out=tmp)
                np.add(tmp, flat[s:e], out=tmp, dtype=np.float64)
                total += float(np.dot(tmp, tmp))
        return math.sqrt(total)

    def add_to_sum(self, fill: Any) -> None:
        """Add ``fill(chunk)`` to the raw sum chunk by chunk (``fill`` writes into a float64 chunk).

        This is how central DP adds noise without a model-sized noise array.
        """
        self._check_open()
        for s, e in _chunks(self.spec.size):
            tmp = self._buf[: e - s]
            fill(tmp)
            np.add(self._acc[s:e], tmp, out=self._acc[s:e])

    def weighted_sum(self) -> np.ndarray:
        """The raw float64 sum (read-only view), for DP and server optimizers."""
        v = self._acc.view()
        v.flags.writeable = False
        return v

    def mean(self) -> Params:
        """The weighted mean in the spec's dtypes; the accumulator stays usable.

        Costs one model in the spec dtypes on top of the accumulator.

        Raises:
            AggregationError: if nothing was folded.
        """
        self._check_open()
        wsum = self._checked_weight_sum()
        out: Params = {}
        for t, a, _ in self.spec.slices():
            o = np.empty(t.size, dtype=t.dtype)
            for s, e in _chunks(t.size):
                tmp = self._buf[: e - s]
                np.divide(self._acc[a + s: a + e], wsum, out=tmp)
                o[s:e] = tmp
            out[t.name] = o.reshape(t.shape)
        return out

    def finalize(self) -> Params:
        """The weighted mean, written over the accumulator's own memory: no extra model-sized buffer.

        The result tensors are views into the old accumulator; the accumulator
        cannot be used afterwards. This is what keeps peak memory at 2x a float32
        model (the float64 sum itself) for the benchmark's targets.

        Raises:
            AggregationError: if nothing was folded or it was already finalized.
        """
        self._check_open()
        wsum = self._checked_weight_sum()
        raw = self._acc.view(np.uint8)
        out: Params = {}
        out_off = 0
        # Tensor i's output starts at byte out_off <= 8 * (its first element), and
        # each chunk is copied to scratch before writing, so a write never lands on
        # an element that has not been read yet.
        for t, a, _ in self.spec.slices():
            dt = np.dtype(t.dtype)
            align = -out_off % dt.itemsize
            out_off += align
            o = np.frombuffer(raw, dtype=dt, count=t.size, offset=out_off) if t.size else np.empty(0, dt)
            for s, e in _chunks(t.size):
                tmp = self._buf[: e - s]
                np.divide(self._acc[a + s: a + e], wsum, out=tmp)
                o[s:e] = tmp
            out[t.name] = o.reshape(t.shape)
            out_off += t.size * dt.itemsize
        self._consumed = True
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Persist sums, weight sum and accepted update ids in one atomic file.

        Raises:
            AccumulatorStateError: if it cannot be written.
            AggregationError: if the accumulator was finalized.
        """
        self._check_open()
        meta = {"spec": self.spec.to_dict(), "weight_sum": self.weight_sum,
                "records": [r.to_dict() for r in self.records]}
        save_state(path, _KIND, meta, {"acc": self._acc})

    @classmethod
    def load(cls, path: str | os.PathLike[str], spec: ParamSpec | None = None) -> RoundAccumulator:
        """Restore an accumulator saved by :meth:`save`.

        Raises:
            AccumulatorStateError: if the file is corrupt or, when ``spec`` is given, for another spec.
        """
        meta, arrays = load_state(path, _KIND)
        try:
            saved = ParamSpec.from_dict(meta["spec"])
            records = [FoldRecord.from_dict(r) for r in meta["records"]]
            weight_sum = float(meta["weight_sum"])
        except (KeyError, TypeError, ValueError, AggregationError) as e:
            raise AccumulatorStateError(f"accumulator state is incomplete: {e}", where=str(path)) from e
        if spec is not None and saved != spec:
            raise AccumulatorStateError("saved accumulator is for another parameter spec", where=str(path),
                                        hint="each round needs its own state file")
        acc = arrays.get("acc")
        if acc is None or acc.dtype != np.float64 or acc.size != saved.size:
            raise AccumulatorStateError("accumulator array does not match its spec", where=str(path))
        if len({r.update_id for r in records}) != len(records):
            raise AccumulatorStateError("accumulator state lists an update twice", where=str(path))
        self = cls(saved)
        self._acc = acc
        self.weight_sum = weight_sum
        self.records = records
        self._ids = {r.update_id for r in records}
        return self

    def _checked_weight_sum(self) -> float:
        if self.weight_sum <= 0:
            raise AggregationError("no updates were folded; there is nothing to average",
                                   hint="check the round's quorum before aggregating")
        return self.weight_sum

    def _check_open(self) -> None:
        if self._consumed:
            raise AggregationError("this accumulator was finalized; its memory now holds the result")


def fedavg(updates: Iterable[tuple[Mapping[str, np.ndarray] | Sequence[np.ndarray], float]]) -> Params:
    """Weighted average of ``(params, num_samples)`` pairs, streaming (one update in memory at a time).

    Raises:
        AggregationError: if ``updates`` is empty or the updates do not share one spec.
    """
    acc: RoundAccumulator | None = None
    for i, (params, weight) in enumerate(updates):
        if acc is None:
            acc = RoundAccumulator(ParamSpec.from_params(params))
        acc.fold(str(i), params, weight)
    if acc is None:
        raise AggregationError("fedavg needs at least one update")
    return acc.finalize()
