"""Streaming, weighted FedAvg with a float64 accumulator, persistable to disk.

Each update is folded in as it arrives, so memory is the accumulator (8 bytes
per parameter, i.e. 2x a float32 model) and nothing else, however many updates
there are. Folding is ``acc += w * x`` fused into one pass by a small C kernel
(:mod:`._kernels`; without a compiler, a numpy fallback through a 256 KiB
scratch chunk), so no model-sized temporary is made and the float64 sum runs
at the speed of numpy's float32 loop (see benchmarks/RESULTS.md).

The accumulator remembers which update ids it has folded, on disk
(:mod:`._journal`), and ``save`` writes that journal before the sums' atomic
state file, so after a crash a server reloads both and a retried update is
refused as already counted, never counted twice.
"""

from __future__ import annotations

import math
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import _kernels
from ._errors import AccumulatorStateError, AggregationError
from ._journal import FoldJournal, FoldRecord, journal_path
from ._params import Params, ParamSpec, as_named
from ._state import load_state, save_state

__all__ = ["FoldRecord", "RoundAccumulator", "fedavg", "l2_norm"]

CHUNK = _kernels.CHUNK
_KIND = "round-accumulator"


def l2_norm(params: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> float:
    """The L2 norm of all tensors together, summed in float64 without a full-size temporary."""
    return math.sqrt(sum(_kernels.sumsq(_kernels.flat_view(a)) for a in as_named(params).values()))


class RoundAccumulator:
    """Weighted running sum of updates for one round: ``sum(w_i * s_i * x_i) / sum(w_i)``.

    ``w_i`` is the weight (the sample count for FedAvg) and ``s_i`` a scale a
    robust policy applied (norm clipping); ``s_i`` is 1 for an unclipped update.
    Each fold's :class:`FoldRecord` goes to an on-disk journal, so memory is the
    float64 sum plus a fixed few kilobytes, however many updates arrive.

    Raises:
        AggregationError: from :meth:`fold` if an update does not fit the spec or a weight is bad.
    """

    def __init__(self, spec: ParamSpec, *, journal: FoldJournal | None = None) -> None:
        """``journal``: where the fold records go; by default a new private temp file (``load`` passes the saved one)."""
        self.spec = spec
        self._acc = np.zeros(spec.size, dtype=np.float64)
        self.weight_sum = 0.0
        self._journal = journal if journal is not None else FoldJournal.create(secrets.token_hex(16))
        self._dist = (0, 0.0, 0.0)  # Welford's (n, mean, M2) of the recorded distances
        self._consumed = False

    @property
    def count(self) -> int:
        return len(self._journal)

    @property
    def accepted_ids(self) -> list[str]:
        """Every folded update id, in fold order (read from the journal: O(count) memory)."""
        return [r.update_id for r in self._journal]

    @property
    def records(self) -> list[FoldRecord]:
        """Every fold record, in fold order (O(count) memory; :meth:`iter_records` streams them)."""
        return list(self._journal)

    def iter_records(self) -> Iterator[FoldRecord]:
        """The fold records in fold order, read from disk in batches (fixed memory)."""
        return iter(self._journal)

    def distance_stats(self) -> tuple[int, float, float]:
        """How many folds recorded a distance, and those distances' mean and (population) std."""
        n, mean, m2 = self._dist
        return n, mean, math.sqrt(m2 / n) if n else 0.0

    def __contains__(self, update_id: object) -> bool:
        return update_id in self._journal

    def fold(self, update_id: str, params: Mapping[str, np.ndarray] | Sequence[np.ndarray], weight: float,
             *, scale: float = 1.0, distance: float | None = None, norm: float | None = None) -> bool:
        """Add ``weight * scale * params`` to the sum.

        Returns False (and changes nothing) if ``update_id`` was already folded,
        so a retried upload is idempotent.

        Raises:
            AggregationError: if the params do not fit the spec, the weight is not
                positive and finite, or the accumulator was finalized.
            AccumulatorStateError: if the journal cannot be written (nothing is folded then).
        """
        self._check_open()
        if update_id in self._journal:
            return False
        if not (math.isfinite(weight) and weight > 0) or not (math.isfinite(scale) and scale >= 0):
            raise AggregationError(f"weight {weight} / scale {scale} must be finite and positive",
                                   where=update_id)
        named = as_named(params)
        self.spec.check(named, where=update_id)
        try:
            self._journal.append(FoldRecord(update_id, float(weight), float(scale), distance, norm))
        except sqlite3.Error as e:
            raise AccumulatorStateError(f"cannot record update {update_id}: {e}",
                                        hint="check free space in the temp or state directory") from e
        ws = float(weight) * float(scale)
        for t, a, b in self.spec.slices():
            _kernels.axpy(self._acc[a:b], _kernels.flat_view(named[t.name]), ws)
        self.weight_sum += float(weight)
        if distance is not None:
            self._note_distance(distance)
        return True

    def _note_distance(self, x: float) -> None:
        n, mean, m2 = self._dist
        d = x - mean
        mean += d / (n + 1)
        self._dist = (n + 1, mean, m2 + d * (x - mean))

    def distance_to_mean(self, params: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> float | None:
        """L2 distance of ``params`` from the current weighted mean (None before the first fold)."""
        self._check_open()
        if self.weight_sum == 0:
            return None
        named = as_named(params)
        self.spec.check(named)
        inv = 1.0 / self.weight_sum
        return math.sqrt(sum(_kernels.dist2(self._acc[a:b], _kernels.flat_view(named[t.name]), inv)
                             for t, a, b in self.spec.slices()))

    def add_to_sum(self, fill: Callable[[np.ndarray], None]) -> None:
        """Add ``fill(chunk)`` to the raw sum chunk by chunk (``fill`` writes into a float64 chunk).

        This is how central DP adds noise without a model-sized noise array.
        """
        self._check_open()
        buf = np.empty(min(CHUNK, max(self.spec.size, 1)), dtype=np.float64)
        for s in range(0, self.spec.size, CHUNK):
            e = min(s + CHUNK, self.spec.size)
            tmp = buf[: e - s]
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
        for t, a, b in self.spec.slices():
            o = np.empty(t.size, dtype=t.dtype)
            np.divide(self._acc[a:b], wsum, out=o, casting="same_kind")  # float64 divide, then one rounding
            out[t.name] = o.reshape(t.shape)
        return out

    def finalize(self) -> Params:
        """The weighted mean, written over the accumulator's own memory: no extra model-sized buffer.

        The result tensors are views into the old accumulator; the accumulator
        cannot fold again afterwards (``count``, ``weight_sum`` and the records
        stay readable). This is what keeps peak memory at 2x a float32 model
        (the float64 sum itself) for the benchmark's targets.

        Raises:
            AggregationError: if nothing was folded or it was already finalized.
        """
        self._check_open()
        wsum = self._checked_weight_sum()
        raw = self._acc.view(np.uint8)
        out: Params = {}
        out_off = 0
        # Tensor i's output starts at byte out_off <= 8 * (its first element), so writing forward
        # never lands on an element that has not been read yet (the kernel's precondition).
        for t, a, _ in self.spec.slices():
            dt = np.dtype(t.dtype)
            out_off += -out_off % dt.itemsize
            _kernels.divide_narrow(self._acc, a, t.size, out_off, dt, wsum)
            o = np.frombuffer(raw, dtype=dt, count=t.size, offset=out_off) if t.size else np.empty(0, dt)
            out[t.name] = o.reshape(t.shape)
            out_off += t.size * dt.itemsize
        self._consumed = True
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Persist the sums, weight sum and fold records: ``path`` and ``<path>.records``.

        The records file is committed (fsynced) first and the state file then
        replaced atomically; the state names how many records its sums include,
        so a crash at any point leaves a consistent pair (see :mod:`._journal`).

        Raises:
            AccumulatorStateError: if it cannot be written.
            AggregationError: if the accumulator was finalized.
        """
        self._check_open()
        jp = journal_path(path)
        try:
            if self._journal.path is not None and self._journal.path.resolve() == jp.resolve():
                self._journal.commit()
            else:
                self._journal = self._journal.save_as(jp)
        except (sqlite3.Error, OSError) as e:
            raise AccumulatorStateError(f"cannot write the fold records: {e}", where=str(jp),
                                        hint="check free disk space and that the directory is writable") from e
        meta = {"spec": self.spec.to_dict(), "weight_sum": self.weight_sum, "count": self.count,
                "journal_id": self._journal.journal_id, "distance_stats": list(self._dist)}
        save_state(path, _KIND, meta, {"acc": self._acc})

    @classmethod
    def load(cls, path: str | os.PathLike[str], spec: ParamSpec | None = None) -> RoundAccumulator:
        """Restore an accumulator saved by :meth:`save` (its ``.records`` file must be beside it).

        Raises:
            AccumulatorStateError: if either file is corrupt or missing, or, when
                ``spec`` is given, for another spec.
        """
        meta, arrays = load_state(path, _KIND)
        try:
            saved = ParamSpec.from_dict(meta["spec"])
            weight_sum = float(meta["weight_sum"])
            legacy = [FoldRecord.from_dict(r) for r in meta["records"]] if "records" in meta else None
            if legacy is None:
                count, journal_id = int(meta["count"]), str(meta["journal_id"])
                n, mean, m2 = meta["distance_stats"]
                dist = (int(n), float(mean), float(m2))
        except (KeyError, TypeError, ValueError, AggregationError) as e:
            raise AccumulatorStateError(f"accumulator state is incomplete: {e}", where=str(path)) from e
        if spec is not None and saved != spec:
            raise AccumulatorStateError("saved accumulator is for another parameter spec", where=str(path),
                                        hint="each round needs its own state file")
        acc = arrays.get("acc")
        if acc is None or acc.dtype != np.float64 or acc.size != saved.size:
            raise AccumulatorStateError("accumulator array does not match its spec", where=str(path))
        if legacy is None:
            self = cls(saved, journal=FoldJournal.open(journal_path(path), journal_id, count))
            self._dist = dist
        else:  # a state file from before the journal: its records move to one at the next save
            if len({r.update_id for r in legacy}) != len(legacy):
                raise AccumulatorStateError("accumulator state lists an update twice", where=str(path))
            self = cls(saved)
            for r in legacy:
                self._journal.append(r)
                if r.distance is not None:
                    self._note_distance(r.distance)
        self._acc = acc
        self.weight_sum = weight_sum
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
