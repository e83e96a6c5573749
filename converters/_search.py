"""The ``[search]`` pass: accuracy-aware search over compression recipes.

Candidates are the product of structured ratios x sparsities x *variants*; a
variant is a target (``onnx`` / ``tflite``) x precision (fp32, fp16,
int8-dynamic, int8-static) x that target's quantization settings (ORT:
calibration method and per-channel weights; TFLite: calibration method and
int8 I/O). Each candidate is built, exported and measured on its OWN runtime
(onnxruntime for ONNX, ai-edge-litert's Interpreter for TFLite; or the
caller's ``measure``) for accuracy, size and latency. The result holds every measurement, the
Pareto front (accuracy drop, size, latency) and the pick: the smallest (or
fastest, ``objective``) candidate meeting ``max_accuracy_drop``,
``max_latency_ms`` and ``max_size_mb``. All candidates run (unlike INC's
tuner, which stops at the first passing config, INC #1617), so the front is
complete. On Ctrl-C, a time limit, or a budget nothing meets, the best
candidate so far is kept and ``failed`` says which constraint it misses;
``checkpoint`` writes the result after every candidate (INC #2261 saves
nothing when the goal is missed).

Why not neural-compressor's ``autotune``: in INC 3.10 (installed here)
``neural_compressor.torch`` does not import (it needs py-cpuinfo, psutil and
prettytable, not dependencies). With them (re-checked, docs/compression.md),
its PT2E static autotune works on the digits CNN, but the result exports to an
ONNX file whose weights stay float32 (no smaller) and litert-torch cannot
convert it ("Invalid TFLite MLIR module"); RTN needs ``accelerate``. Its ONNX
tuner moved out of INC 3.x (to onnx-neural-compressor). The loop it would
give us, try configs and evaluate, is this module, on each device runtime,
with a complete front.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgepack import ConfigError

from . import _prune, _prune_structured, _quantize_tflite
from ._compress_errors import EvalDataRequiredError
from ._prune import check_sparsity
from ._search_measure import MEASURES, Measure, Variant, measure_on_target

__all__ = ["MEASURES", "TARGETS", "Candidate", "SearchConfig", "SearchResult", "Variant", "pareto_front", "run",
           "variants"]

OBJECTIVES = ("size", "latency")
SIZE_METRICS = ("raw", "xz")
PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static")
TARGETS = ("onnx", "tflite")
ORT_CALIBRATION = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class SearchConfig:
    """Recipe section ``[search]``. Budgets left ``None`` are not checked."""

    sparsities: tuple[float, ...] = (0.0, 0.5, 0.8)
    structured_ratios: tuple[float, ...] = (0.0, 0.3, 0.5)
    #: runtimes to measure on; empty: the build's [build] targets (standalone ``run``: onnx)
    targets: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ("fp32", "int8-dynamic", "int8-static")
    #: ONNX int8-static: ORT calibration methods (minmax | entropy | percentile)
    calibration_methods: tuple[str, ...] = ("minmax",)
    #: ONNX int8: per-channel weight scales on / off
    per_channel: tuple[bool, ...] = (True,)
    #: TFLite int8-static: calibration range merge (minmax | moving_average, see _quantize_tflite)
    tflite_calibration_methods: tuple[str, ...] = ("minmax",)
    #: TFLite int8-static: integer input/output tensors on / off
    tflite_int8_io: tuple[bool, ...] = (True,)
    #: fraction, like [parity] max_accuracy_drop: 0.01 = one accuracy point
    max_accuracy_drop: float | None = 0.01
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    objective: str = "size"  # size | latency
    #: which size the size budget and objective use: the artifact ("raw") or its xz transport size
    size_metric: str = "raw"
    finetune_epochs: int = 2
    exporter: str = "torchscript"
    threads: int = 1
    latency_runs: int = 30
    #: stop starting new candidates after this many seconds (None: no limit)
    max_seconds: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for s in self.sparsities:
            check_sparsity(s, "[search] sparsities")
        for r in self.structured_ratios:
            check_sparsity(r, "[search] structured_ratios")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise ConfigError(f"[search] precisions: unsupported {bad or 'empty list'}", where="[search] precisions",
                              hint=f"use {', '.join(PRECISIONS)}")
        for name, values, ok in (("targets", self.targets, TARGETS),
                                 ("calibration_methods", self.calibration_methods, ORT_CALIBRATION),
                                 ("tflite_calibration_methods", self.tflite_calibration_methods,
                                  _quantize_tflite.CALIBRATION_METHODS)):
            if any(v not in ok for v in values):
                raise ConfigError(f"[search] {name}: unsupported {[v for v in values if v not in ok]}",
                                  where=f"[search] {name}", hint=f"use {', '.join(ok)}")
        for name, flags in (("per_channel", self.per_channel), ("tflite_int8_io", self.tflite_int8_io)):
            if not flags or any(not isinstance(f, bool) for f in flags):
                raise ConfigError(f"[search] {name} must be a non-empty list of true/false", where=f"[search] {name}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"[search] objective must be one of {OBJECTIVES}", where="[search] objective")
        if self.size_metric not in SIZE_METRICS:
            raise ConfigError(f"[search] size_metric must be one of {SIZE_METRICS}", where="[search] size_metric")


def _onnx_variants(precision: str, cfg: SearchConfig) -> list[Variant]:
    if precision == "int8-static":
        return [Variant("onnx", precision, m, pc) for m in cfg.calibration_methods for pc in cfg.per_channel]
    if precision == "int8-dynamic":
        return [Variant("onnx", precision, None, pc) for pc in cfg.per_channel]
    return [Variant("onnx", precision)]


def _tflite_variants(precision: str, cfg: SearchConfig) -> list[Variant]:
    if precision == "int8-static":
        return [Variant("tflite", precision, m, None, io) for m in cfg.tflite_calibration_methods
                for io in cfg.tflite_int8_io]
    return [Variant("tflite", precision)]


#: target -> the variants one precision expands to under the config's per-target settings
_VARIANTS: dict[str, Callable[[str, SearchConfig], list[Variant]]] = {"onnx": _onnx_variants,
                                                                      "tflite": _tflite_variants}


def variants(cfg: SearchConfig, default_targets: tuple[str, ...] = ("onnx",)) -> list[Variant]:
    """Every target x precision x per-target setting the search measures for each pruned model."""
    return [v for t in (cfg.targets or default_targets) for p in cfg.precisions for v in _VARIANTS[t](p, cfg)]


@dataclass
class Candidate:
    structured_ratio: float
    sparsity: float
    precision: str
    calibration_method: str | None
    target: str = "onnx"
    per_channel: bool | None = None
    int8_io: bool | None = None
    accuracy: float | None = None
    accuracy_drop: float | None = None
    size: int = 0
    size_xz: int = 0
    latency_ms: float = 0.0
    failed: list[str] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def of(cls, ratio: float, sparsity: float, v: Variant) -> Candidate:
        return cls(ratio, sparsity, v.precision, v.calibration_method, v.target, v.per_channel, v.int8_io)

    @property
    def variant(self) -> Variant:
        return Variant(self.target, self.precision, self.calibration_method, self.per_channel, self.int8_io)

    @property
    def label(self) -> str:
        target, rest = self.variant.label.split(":", 1)
        return f"{target}:s{self.structured_ratio:g}-u{self.sparsity:g}-{rest}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}


@dataclass
class SearchResult:
    candidates: list[Candidate]
    baseline: Candidate | None
    best: Candidate | None
    #: "met" | "budget_not_met" | "interrupted" | "time_limit" (the last two may also have met the budget)
    status: str
    met_budget: bool
    front: list[Candidate]
    best_model: Any = None
    best_artifact: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "met_budget": self.met_budget,
                "best": self.best.to_dict() if self.best else None,
                "baseline": self.baseline.to_dict() if self.baseline else None,
                "front": [c.label for c in self.front], "candidates": [c.to_dict() for c in self.candidates]}


def _size(c: Candidate, cfg: SearchConfig) -> int:
    return c.size if cfg.size_metric == "raw" else c.size_xz


def check_budget(c: Candidate, cfg: SearchConfig) -> list[str]:
    """Names of the constraints ``c`` fails, with the measured value."""
    failed = []
    if cfg.max_accuracy_drop is not None and c.accuracy_drop is not None and c.accuracy_drop > cfg.max_accuracy_drop:
        failed.append(f"max_accuracy_drop: {c.accuracy_drop:.4f} > {cfg.max_accuracy_drop}")
    if cfg.max_latency_ms is not None and c.latency_ms > cfg.max_latency_ms:
        failed.append(f"max_latency_ms: {c.latency_ms:.3f} > {cfg.max_latency_ms}")
    if cfg.max_size_mb is not None and _size(c, cfg) / 1e6 > cfg.max_size_mb:
        failed.append(f"max_size_mb: {_size(c, cfg) / 1e6:.4f} > {cfg.max_size_mb}")
    return failed


def pareto_front(cands: list[Candidate], cfg: SearchConfig) -> list[Candidate]:
    """Candidates no other beats on accuracy drop, size and latency at once."""
    ok = [c for c in cands if c.error is None]

    def key(c: Candidate) -> tuple[float, float, float]:
        return (c.accuracy_drop or 0.0, float(_size(c, cfg)), c.latency_ms)

    front = []
    for c in ok:
        kc = key(c)
        if not any(all(a <= b for a, b in zip(key(o), kc, strict=False)) and key(o) != kc for o in ok):
            front.append(c)
    return sorted(front, key=lambda c: _size(c, cfg))


def _pick(cands: list[Candidate], cfg: SearchConfig) -> tuple[Candidate | None, bool]:
    ok = [c for c in cands if c.error is None]
    if not ok:
        return None, False
    feasible = [c for c in ok if not c.failed]
    primary = (lambda c: _size(c, cfg)) if cfg.objective == "size" else (lambda c: c.latency_ms)
    if feasible:
        return min(feasible, key=lambda c: (primary(c), c.accuracy_drop or 0.0)), True
    # nothing meets the budget: keep the one that misses the fewest constraints, then the most accurate
    return min(ok, key=lambda c: (len(c.failed), c.accuracy_drop or 0.0, primary(c))), False


def _checkpoint(path: str | None, result: SearchResult) -> None:
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(result.to_dict(), f, indent=1)
    os.replace(tmp, path)


class _TimeLimit(Exception):
    """Internal: the search's ``max_seconds`` ran out."""


def run(model: Any, config: SearchConfig | None = None, *, eval_x: np.ndarray | None, eval_y: np.ndarray | None,
        calib_x: np.ndarray | None = None, train_x: np.ndarray | None = None, train_y: np.ndarray | None = None,
        measure: Measure | None = None, checkpoint: str | None = None,
        default_targets: tuple[str, ...] = ("onnx",)) -> tuple[Any, SearchResult]:
    """Search, and return (best model, result). ``measure(model, variant)`` may replace the default
    measurement (each target on its own runtime, ``MEASURES``); it returns ``accuracy``, ``size``,
    ``size_xz``, ``latency_ms`` and optionally ``artifact`` bytes. ``default_targets`` are used when
    ``config.targets`` is empty (the build passes its [build] targets).

    Raises:
        EvalDataRequiredError: no labelled eval data, which every accuracy measurement needs.
        ConfigError: a bad [search] setting.
    """
    cfg = config or SearchConfig()
    if eval_x is None or eval_y is None or len(eval_x) == 0:
        raise EvalDataRequiredError("the search measures accuracy, but no labelled eval data was given",
                                    where="--eval / [data] eval",
                                    hint="pass held-out data with labels (.npz with x and y)")
    todo = variants(cfg, default_targets)
    meas = measure or measure_on_target(eval_x, eval_y, calib_x if calib_x is not None else train_x, cfg)
    start = time.monotonic()
    cands: list[Candidate] = []
    models: dict[str, Any] = {}
    artifacts: dict[str, bytes] = {}
    result = SearchResult([], None, None, "met", False, [])
    status = None
    try:
        base = Candidate.of(0.0, 0.0, Variant(todo[0].target, "fp32"))
        _fill(base, meas(model, base.variant), None)
        result.baseline = base
        for ratio, sparsity, pruned in _pruned_models(model, cfg, eval_x, eval_y, train_x, train_y):
            for v in todo:
                if cfg.max_seconds is not None and time.monotonic() - start > cfg.max_seconds:
                    status = "time_limit"
                    raise _TimeLimit
                c = Candidate.of(ratio, sparsity, v)
                try:
                    m = meas(pruned, v)
                    _fill(c, m, base.accuracy)
                    artifacts[c.label] = m.get("artifact", b"")
                except Exception as e:  # one broken candidate must not end the search
                    c.error = f"{type(e).__name__}: {e}"
                c.failed = check_budget(c, cfg) if c.error is None else []
                cands.append(c)
                models[c.label] = pruned
                _update(result, cands, cfg, models, artifacts)
                _checkpoint(checkpoint, result)
    except KeyboardInterrupt:
        status = "interrupted"
    except _TimeLimit:
        pass
    _update(result, cands, cfg, models, artifacts)
    result.status = status or ("met" if result.met_budget else "budget_not_met")
    _checkpoint(checkpoint, result)
    return result.best_model, result


def _update(r: SearchResult, cands: list[Candidate], cfg: SearchConfig, models: dict[str, Any],
            artifacts: dict[str, bytes]) -> None:
    r.candidates = list(cands)
    r.best, r.met_budget = _pick(cands, cfg)
    r.front = pareto_front(cands, cfg)
    r.best_model = models.get(r.best.label) if r.best else None
    r.best_artifact = artifacts.get(r.best.label) if r.best else None


def _fill(c: Candidate, m: dict[str, Any], base_acc: float | None) -> None:
    c.accuracy, c.size, c.size_xz, c.latency_ms = m["accuracy"], m["size"], m["size_xz"], m["latency_ms"]
    if base_acc is not None and c.accuracy is not None:
        c.accuracy_drop = base_acc - c.accuracy


def _pruned_models(model: Any, cfg: SearchConfig, ex: np.ndarray, ey: np.ndarray, tx: np.ndarray | None,
                   ty: np.ndarray | None) -> Any:
    """Yield (ratio, sparsity, model) lazily so an interrupt loses at most one candidate's work."""
    for ratio in cfg.structured_ratios:
        if ratio > 0:
            sp_cfg = _prune_structured.StructuredPruneConfig(ratio=ratio, finetune_epochs=cfg.finetune_epochs,
                                                             seed=cfg.seed)
            base, _ = _prune_structured.run(model, sp_cfg, example=ex, train_x=tx, train_y=ty, eval_x=ex, eval_y=ey)
        else:
            base = model
        for s in cfg.sparsities:
            if s > 0:
                p_cfg = _prune.PruneConfig(sparsity=s, steps=2, finetune_epochs=cfg.finetune_epochs if tx is not None
                                           else 0, seed=cfg.seed)
                m, _ = _prune.run(copy.deepcopy(base), p_cfg, train_x=tx, train_y=ty, eval_x=ex, eval_y=ey)
            else:
                m = base
            yield ratio, s, m
