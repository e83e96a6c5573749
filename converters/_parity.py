"""Parity: compare an artifact's outputs with the ORIGINAL model's.

Per output: max abs error, max rel error (max |d| over max |reference|, so a
near-zero logit does not blow it up), cosine similarity, SQNR in dB, top-1 and
top-k agreement for classifiers, and with labels the accuracy and its delta.
Budgets are data (``Tolerance``, per precision; STYLE rule 8): ``check``
returns every failure, the pipeline raises one error listing them all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ._recipe import Tolerance

__all__ = ["ParityConfig", "check", "measure", "run"]


@dataclass(frozen=True)
class ParityConfig:
    tolerance: Tolerance
    task: str = "classification"
    top_k: int = 5


def _metrics(ref: np.ndarray, out: np.ndarray, cfg: ParityConfig, labels: np.ndarray | None) -> dict[str, Any]:
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    diff = out64 - ref64
    finite = bool(np.isfinite(out64).all())
    max_abs = float(np.abs(diff).max()) if finite else float("inf")
    scale = float(np.abs(ref64).max()) or 1e-12
    num, den = float((ref64 ** 2).sum()), float((diff ** 2).sum())
    r, o = ref64.ravel(), out64.ravel()
    nr, no = np.linalg.norm(r), np.linalg.norm(o)
    cos = float(r @ o / (nr * no)) if finite and nr > 0 and no > 0 else (1.0 if nr == no == 0 else 0.0)
    m: dict[str, Any] = {
        "max_abs": max_abs, "max_rel": max_abs / scale,
        "cosine": cos,
        "sqnr_db": (float(10 * np.log10(num / den)) if den > 0 else float("inf")) if finite else float("-inf"),
        "finite": finite,
    }
    if cfg.task == "classification" and ref.ndim == 2 and ref.shape[1] > 1:
        ra, oa = ref.argmax(1), np.where(np.isfinite(out).all(1), out.argmax(1), -1)
        m["top1_agreement"] = float((ra == oa).mean())
        k = min(cfg.top_k, ref.shape[1])
        topk = np.argsort(-out64, axis=1)[:, :k]
        m[f"top{k}_agreement"] = float((topk == ra[:, None]).any(1).mean())
        if labels is not None:
            acc_ref = float((ra == labels).mean())
            acc = float((oa == labels).mean())
            m.update(accuracy=acc, reference_accuracy=acc_ref, accuracy_delta=acc - acc_ref)
    return m


def measure(refs: list[np.ndarray], outs: list[np.ndarray], cfg: ParityConfig,
            labels: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One metrics dict per output, in output order."""
    return [_metrics(r, o, cfg, labels if i == 0 else None) for i, (r, o) in enumerate(zip(refs, outs, strict=False))]


#: tolerance field -> (metric, comparison); "max" means the metric may not exceed the budget
_RULES = (
    ("max_abs", "max_abs", "max"),
    ("max_rel", "max_rel", "max"),
    ("min_cosine", "cosine", "min"),
    ("min_sqnr_db", "sqnr_db", "min"),
    ("min_top1_agreement", "top1_agreement", "min"),
)


def check(artifact: str, output_names: list[str], metrics: list[dict[str, Any]],
          tol: Tolerance) -> list[dict[str, Any]]:
    """Every budget the artifact breaks, as ``{artifact, output, metric, value, limit}``."""
    failures = []
    for name, m in zip(output_names, metrics, strict=False):
        if not m["finite"]:
            failures.append({"artifact": artifact, "output": name, "metric": "finite", "value": False,
                             "limit": True})
        for field, metric, kind in _RULES:
            limit = getattr(tol, field)
            if limit is None or metric not in m:
                continue
            v = m[metric]
            if (kind == "max" and not v <= limit) or (kind == "min" and not v >= limit):
                failures.append({"artifact": artifact, "output": name, "metric": metric, "value": v, "limit": limit})
        if tol.max_accuracy_drop is not None and "accuracy_delta" in m and -m["accuracy_delta"] > tol.max_accuracy_drop:
            failures.append({"artifact": artifact, "output": name, "metric": "accuracy_drop",
                             "value": -m["accuracy_delta"], "limit": tol.max_accuracy_drop})
    return failures


def summary(metrics: list[dict[str, Any]], tol: Tolerance, passed: bool) -> dict[str, Any]:
    """The manifest's per-artifact ``parity`` dict: the first output's figures plus the budget."""
    # canonical JSON has no inf/nan: an exact match (SQNR = inf) is recorded as null, like an unmeasured figure
    first = {k: (v if not isinstance(v, float) or np.isfinite(v) else None)
             for k, v in metrics[0].items() if k != "finite"}
    return {"passed": passed, **first, "tolerance": {k: v for k, v in asdict(tol).items() if v is not None}}


def run(artifact: str, output_names: list[str], refs: list[np.ndarray], outs: list[np.ndarray],
        config: ParityConfig, labels: np.ndarray | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Measure and check one artifact: ``(metrics per output, failures)``."""
    metrics = measure(refs, outs, config, labels)
    return metrics, check(artifact, output_names, metrics, config.tolerance)
