"""Latency of each artifact in its device runtime at batch 1, and the guardrail
that flags a quantized artifact slower than its fp32 sibling (users keep
finding int8 slower than fp32: onnxruntime #20052, #17389, #26143)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._cpu import SLOWDOWN_MARGIN
from ._errors import QuantizedSlowerError
from ._runners import open_session

__all__ = ["LatencyConfig", "find_slower", "run"]


@dataclass(frozen=True)
class LatencyConfig:
    runs: int = 30
    warmup: int = 5
    threads: int = 1
    #: one noise margin for the whole project, measured in docs/perf-guardrail.md
    slower_margin: float = SLOWDOWN_MARGIN
    #: ...and by more than this many ms: at tens of microseconds, call overhead, not arithmetic, decides
    min_slower_ms: float = 0.05


def run(fmt: str, data: bytes, sample: list[np.ndarray], config: LatencyConfig | None = None) -> dict[str, float]:
    """p50/p95/mean in ms at batch 1 with ``threads`` intra-op threads.

    Raises:
        ConversionError: the runtime refuses the artifact.
    """
    cfg = config or LatencyConfig()
    s = open_session(fmt, data, cfg.threads)
    times = np.asarray(s.time_one([x[:1] for x in sample], cfg.runs, cfg.warmup))
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "mean_ms": float(times.mean()), "runs": cfg.runs, "threads": cfg.threads}


def find_slower(rows: list[dict[str, Any]], config: LatencyConfig | None = None) -> list[dict[str, Any]]:
    """Quantized artifacts whose p50 exceeds the fp32 artifact of the same format by more than the margin.

    ``rows`` need ``format``, ``precision``, ``name`` and ``latency`` (from ``run``).
    """
    cfg = config or LatencyConfig()
    fp32 = {r["format"]: r for r in rows if r["precision"] == "fp32" and r.get("latency")}
    slow = []
    for r in rows:
        base = fp32.get(r["format"])
        if r["precision"] == "fp32" or base is None or not r.get("latency"):
            continue
        ratio = r["latency"]["p50_ms"] / max(base["latency"]["p50_ms"], 1e-9)
        diff = r["latency"]["p50_ms"] - base["latency"]["p50_ms"]
        if ratio > 1.0 + cfg.slower_margin and diff > cfg.min_slower_ms:
            slow.append({"artifact": r["name"], "baseline": base["name"], "ratio": ratio,
                         "p50_ms": r["latency"]["p50_ms"], "baseline_p50_ms": base["latency"]["p50_ms"]})
    return slow


def enforce(slow: list[dict[str, Any]], strict: bool) -> None:
    """Raises: QuantizedSlowerError under ``strict`` when anything is slower."""
    if strict and slow:
        worst = max(slow, key=lambda s: s["ratio"])
        raise QuantizedSlowerError(
            f"{len(slow)} quantized artifact(s) slower than fp32; worst {worst['artifact']} is "
            f"{worst['ratio']:.2f}x {worst['baseline']}",
            hint="see the report's latency table; try [onnx] activation_type/quant_format, or drop --strict")
