"""Health gates: decide from device reports whether a rollout wave is healthy.

Gates are data (``GateConfig``), metrics are pure functions of the reports
(``measure``), and ``evaluate`` compares one with the other. A rate gate
(failure rate, latency regression, drift) only decides once it has
``min_reports`` samples, capped at the number of devices the rollout has
assigned so far (a 1-device canary cannot wait for 5 reports). A count gate
(load failures, crashes) trips as soon as its count passes its maximum.

Every count is of devices, not of reports: a device that sends the same
failure, crash, success or telemetry report a thousand times counts once (its
own samples are averaged into one), so one lying device moves only its own
share of a gate (docs/threat-model.md, R5).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._errors import BadRequestError

__all__ = ["GateConfig", "GateResult", "evaluate"]


@dataclass(frozen=True)
class GateConfig:
    min_reports: int = 5
    max_failure_rate: float = 0.1
    max_load_failures: int = 0
    max_crashes: int = 0
    #: mean latency on the new release / on the previous one, minus 1
    max_latency_regression: float = 0.5
    #: mean of the devices' own drift score (for example PSI of the prediction distribution)
    max_drift: float = 0.3

    @classmethod
    def from_dict(cls, d: Any) -> GateConfig:
        """Raises BadRequestError on unknown fields or bad values."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise BadRequestError("gates must be an object", where="gates")
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(d) - set(fields)
        if unknown:
            raise BadRequestError(f"unknown gate(s) {sorted(unknown)}", where="gates", hint=f"known: {sorted(fields)}")
        for k, v in d.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise BadRequestError(f"gate {k} must be a non-negative number", where=f"gates.{k}")
            if fields[k] == "int" and not isinstance(v, int):
                raise BadRequestError(f"gate {k} must be an integer", where=f"gates.{k}")
        return cls(**{**dataclasses.asdict(cls()), **d})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GateResult:
    tripped: list[str]            # human-readable reasons, empty if healthy so far
    ready: bool                   # enough healthy evidence to move on
    metrics: dict[str, Any]

    @property
    def reason(self) -> str:
        return "; ".join(self.tripped)


def _num(data: Any, key: str) -> float | None:
    v = data.get(key) if isinstance(data, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def evaluate(gates: GateConfig, reports: Iterable[Any], baseline_latency: list[float], assigned: int,
             wave_devices: set[str]) -> GateResult:
    """Evaluate one rollout's reports (all on the rollout's release) against ``gates``.

    ``reports`` are rows with ``kind``, ``ok``, ``device_id`` and ``data``;
    ``baseline_latency`` holds latency samples from devices on the previous release.
    The wave is ``ready`` when nothing tripped and at least ``min_reports`` of the
    current wave's devices (capped at its size) reported a healthy install.
    """
    need = max(1, min(gates.min_reports, assigned))
    outcome_devices: set[Any] = set()
    failed: set[Any] = set()
    load_failed: set[Any] = set()
    crashed: set[Any] = set()
    ok_devices: set[str] = set()
    latency_by: dict[Any, list[float]] = {}
    drift_by: dict[Any, list[float]] = {}
    for r in reports:
        who = r.device_id
        if r.kind in ("install", "health"):
            outcome_devices.add(who)
            if r.ok:
                ok_devices.add(r.device_id)
            else:  # a failure is not undone by the same device's later success reports
                failed.add(who)
                if (r.data or {}).get("stage") == "load":
                    load_failed.add(who)
        elif r.kind == "crash":
            crashed.add(who)
        elif r.kind == "telemetry":
            if (v := _num(r.data, "latency_ms")) is not None:
                latency_by.setdefault(who, []).append(v)
            if (v := _num(r.data, "drift")) is not None:
                drift_by.setdefault(who, []).append(v)
    outcomes, failures, load_failures, crashes = len(outcome_devices), len(failed), len(load_failed), len(crashed)
    latency = [statistics.fmean(v) for v in latency_by.values()]  # one sample per device
    drift = [statistics.fmean(v) for v in drift_by.values()]
    tripped: list[str] = []
    rate = failures / outcomes if outcomes else 0.0
    if outcomes >= need and rate > gates.max_failure_rate:
        tripped.append(f"failure rate {rate:.0%} > {gates.max_failure_rate:.0%} ({failures}/{outcomes} devices)")
    if load_failures > gates.max_load_failures:
        tripped.append(f"{load_failures} device(s) with a load failure > {gates.max_load_failures}")
    if crashes > gates.max_crashes:
        tripped.append(f"{crashes} device(s) reporting a crash > {gates.max_crashes}")
    regression = None
    if len(latency) >= need and baseline_latency:
        base = statistics.fmean(baseline_latency)
        regression = statistics.fmean(latency) / base - 1 if base > 0 else None
        if regression is not None and regression > gates.max_latency_regression:
            tripped.append(f"latency regression {regression:+.0%} > {gates.max_latency_regression:+.0%} "
                           f"({len(latency)} devices vs {len(baseline_latency)} samples on the previous release)")
    mean_drift = statistics.fmean(drift) if drift else None
    if mean_drift is not None and len(drift) >= need and mean_drift > gates.max_drift:
        tripped.append(f"prediction drift {mean_drift:.3f} > {gates.max_drift} ({len(drift)} devices)")
    metrics = {"needed": need, "assigned": assigned, "outcomes": outcomes, "failures": failures,
               "failure_rate": rate, "ok_devices": len(ok_devices), "load_failures": load_failures,
               "crashes": crashes, "latency_samples": len(latency),
               "latency_ms": statistics.fmean(latency) if latency else None,
               "baseline_latency_ms": statistics.fmean(baseline_latency) if baseline_latency else None,
               "latency_regression": regression, "drift": mean_drift, "drift_samples": len(drift)}
    wave_ok = len(ok_devices & wave_devices)
    wave_need = max(1, min(gates.min_reports, len(wave_devices)))
    metrics.update(wave_devices=len(wave_devices), wave_ok=wave_ok, wave_needed=wave_need)
    return GateResult(tripped, not tripped and wave_ok >= wave_need, metrics)
