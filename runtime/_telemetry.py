"""Telemetry with bounded memory: fixed-size histograms and counters only.

Nothing grows with the number of predictions: the latency histogram has fixed
log-spaced buckets, the prediction distribution has one counter per label, and
drift uses the training reference's own bins. Drift is sampled (every Nth call,
at most ``max_drift_values`` values) because a full ``np.histogram`` per call
would cost more than a tiny model's inference (measured in bench_runtime.py).

Nothing in a snapshot is an input or an output either: no value seen (not even
the smallest or largest), only counts, histograms over the training reference's
bins, latency, and for non-classifiers the mean and std of at least
``min_values_for_moments`` output values (fewer could be solved back to the
values themselves: one value is its own mean, two are mean +- std).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._iospec import IOSpec

__all__ = ["Telemetry", "TelemetryConfig", "gate_summary", "psi"]

# 1 µs .. ~100 s, 4 buckets per decade: enough to read p50/p99 to within ~30%.
_LAT_EDGES_S = [10 ** (e / 4) for e in range(-24, 9)]
_EPS = 1e-4
_min, _max = np.minimum.reduce, np.maximum.reduce


@dataclass(frozen=True)
class TelemetryConfig:
    enabled: bool = True
    drift_sample_every: int = 64
    max_drift_values: int = 4096
    #: output mean/std are reported only over at least this many values (privacy: see the module doc)
    min_values_for_moments: int = 16


def gate_summary(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The summary fields the fleet's health gates and device plots read from a telemetry report.

    ``latency_ms`` is the mean inference latency; ``drift`` is the largest PSI of any input
    against its training-time histogram (the device's own drift score). Either is left out
    until it has been measured, so a device with no predictions does not count as a sample.
    ``prediction_counts`` (class index -> count, for a classifier) feeds the device page's plot.
    """
    out: dict[str, Any] = {}
    mean_ms = (snapshot.get("latency") or {}).get("mean_ms")
    if isinstance(mean_ms, (int, float)):
        out["latency_ms"] = float(mean_ms)
    psis = [d["psi"] for d in snapshot.get("inputs") or () if isinstance(d.get("psi"), (int, float))]
    if psis:
        out["drift"] = float(max(psis))
    preds = snapshot.get("predictions") or {}
    if preds.get("kind") == "argmax_counts" and any(preds.get("counts") or ()):
        out["prediction_counts"] = {str(i): int(c) for i, c in enumerate(preds["counts"]) if c}
    return out


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two probability vectors (bins floored at 1e-4).

    Rule of thumb (Siddiqi 2006): < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant shift.
    """
    e = np.clip(np.asarray(expected, dtype=np.float64), _EPS, None)
    a = np.clip(np.asarray(actual, dtype=np.float64), _EPS, None)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


class _InputStats:
    __slots__ = ("name", "edges", "ref", "counts", "sampled", "out_of_range", "rmin", "rmax")

    def __init__(self, spec: Any) -> None:
        self.name = spec.name
        self.edges, self.ref = spec.reference_edges, spec.reference_probs
        self.counts = np.zeros(len(self.ref), dtype=np.int64) if self.ref is not None else None
        self.sampled = 0
        self.out_of_range = 0
        self.rmin = -math.inf if spec.range_min is None else float(spec.range_min)
        self.rmax = math.inf if spec.range_max is None else float(spec.range_max)


class Telemetry:
    """Counters for one loaded model. ``snapshot()`` is JSON-serialisable."""

    def __init__(self, io: IOSpec, *, name: str, version: int, artifact: str, backend: str,
                 config: TelemetryConfig | None = None) -> None:
        self.config = config or TelemetryConfig()
        self.name, self.version, self.artifact, self.backend = name, version, artifact, backend
        self.calls = 0
        self._every = self.config.drift_sample_every
        self.samples = 0
        self.lat_counts = [0] * (len(_LAT_EDGES_S) + 1)
        self.lat_sum = 0.0
        self.lat_max = 0.0
        self.errors: dict[str, int] = {}
        self.inputs = [_InputStats(s) for s in io.inputs]
        self.n_labels = len(io.labels) if io.labels else 0
        self.classification = io.task == "classification"
        self.pred_counts: list[int] | None = None
        self._out_n = 0
        self._out_sum = 0.0
        self._out_sq = 0.0

    def record_latency(self, seconds: float) -> None:
        self.calls += 1
        self.lat_counts[bisect.bisect_right(_LAT_EDGES_S, seconds)] += 1
        self.lat_sum += seconds
        if seconds > self.lat_max:
            self.lat_max = seconds

    def record(self, seconds: float, y: np.ndarray) -> None:
        """One successful call: its latency and its first output (one method call on the hot path)."""
        self.calls += 1
        self.lat_counts[bisect.bisect_right(_LAT_EDGES_S, seconds)] += 1
        self.lat_sum += seconds
        if seconds > self.lat_max:
            self.lat_max = seconds
        self.observe_output(y)

    def record_error(self, err: BaseException) -> None:
        k = type(err).__name__
        self.errors[k] = self.errors.get(k, 0) + 1

    def observe_input(self, k: int, x: np.ndarray) -> int:
        """Update range counters for input ``k``; return how many values were out of range."""
        st = self.inputs[k]
        lo, hi = _min(x, None), _max(x, None)
        bad = 0
        if lo < st.rmin or hi > st.rmax:
            bad = int(np.count_nonzero((x < st.rmin) | (x > st.rmax)))
            st.out_of_range += bad
        if st.counts is not None and self.calls % self._every == 0:
            flat = x.reshape(-1)
            step = max(1, flat.size // self.config.max_drift_values)
            v = flat[::step]
            idx = np.searchsorted(st.edges, v, side="right") - 1
            np.clip(idx, 0, len(st.ref) - 1, out=idx)
            st.counts += np.bincount(idx, minlength=len(st.ref))
            st.sampled += v.size
        return bad

    def observe_output(self, y: np.ndarray) -> None:
        n = y.shape[0] if y.ndim else 1
        self.samples += n
        if self.classification and y.ndim == 2 and y.shape[1] > 1:
            counts = self.pred_counts
            if counts is None:
                counts = self.pred_counts = [0] * max(self.n_labels, y.shape[1])
            if n == 1:
                # the common on-device case: a plain list index is ~10x cheaper than bincount
                counts[int(y.argmax())] += 1
            else:
                for k, c in enumerate(np.bincount(y.argmax(axis=1), minlength=len(counts)).tolist()):
                    counts[k] += c
        else:
            self._out_n += y.size
            self._out_sum += float(y.sum())
            self._out_sq += float(np.square(y, dtype=np.float64).sum())

    def _latency(self) -> dict[str, Any]:
        def quantile(q: float) -> float | None:
            if not self.calls:
                return None
            target, acc = q * self.calls, 0
            for i, c in enumerate(self.lat_counts):
                acc += c
                if acc >= target:
                    return round(_LAT_EDGES_S[min(i, len(_LAT_EDGES_S) - 1)] * 1e3, 6)
            return None
        return {
            "count": self.calls, "mean_ms": round(self.lat_sum / self.calls * 1e3, 6) if self.calls else None,
            "max_ms": round(self.lat_max * 1e3, 6), "p50_ms_upper": quantile(0.5), "p99_ms_upper": quantile(0.99),
            "bucket_edges_ms": [round(e * 1e3, 6) for e in _LAT_EDGES_S],
            "buckets": list(self.lat_counts),
        }

    def snapshot(self) -> dict[str, Any]:
        """A compact report to upload: plain ints, floats, strings and lists only."""
        inputs = []
        for st in self.inputs:
            d: dict[str, Any] = {"name": st.name, "out_of_range_values": st.out_of_range,
                                 "drift_values_sampled": st.sampled, "psi": None, "histogram": None}
            if st.counts is not None and st.sampled:
                d["psi"] = round(psi(st.ref, st.counts / st.sampled), 6)
                d["histogram"] = [int(c) for c in st.counts]
            inputs.append(d)
        preds: dict[str, Any]
        if self.pred_counts is not None:
            preds = {"kind": "argmax_counts", "counts": [int(c) for c in self.pred_counts]}
        else:
            n = self._out_n
            mean = self._out_sum / n if n >= max(1, self.config.min_values_for_moments) else None
            var = self._out_sq / n - mean * mean if n and mean is not None else None
            preds = {"kind": "moments", "count": n, "mean": mean,
                     "std": math.sqrt(max(var, 0.0)) if var is not None else None}
        return {
            "model": self.name, "active_version": self.version, "artifact": self.artifact,
            "backend": self.backend, "calls": self.calls, "samples": self.samples,
            "latency": self._latency(), "predictions": preds, "inputs": inputs,
            "errors": dict(self.errors),
        }
