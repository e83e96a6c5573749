"""What each compression pass cost: accuracy, size and latency measured
before and after, so the build report can attribute every change to a pass.

Sizes are of the fp32 ``state_dict`` as ``torch.save`` writes it (raw) and of
the same bytes through lzma (what transport would carry, see ``_transport``):
unstructured pruning leaves the raw size unchanged and only the compressed
size shows its gain. Latency is torch eager at batch 1 on the build machine
(the exported artifacts' runtime latency is measured by the build itself).
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["ModelMetrics", "PassReport", "measure", "predict_logits"]


@dataclass(frozen=True)
class ModelMetrics:
    #: top-1 accuracy on the eval labels (None without labels)
    accuracy: float | None
    #: top-1 agreement with the reference model's predictions (None without a reference)
    agreement: float | None
    params: int
    nonzero_params: int
    size_bytes: int
    compressed_bytes: int
    latency_ms: float

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero_params / max(self.params, 1)


@dataclass
class PassReport:
    """One pass's effect. ``details`` holds pass-specific figures (MACs, schedule, epochs...)."""

    name: str
    config: dict[str, Any]
    before: ModelMetrics
    after: ModelMetrics
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def cost(self) -> dict[str, float | None]:
        """Accuracy points lost and size/latency ratios (before / after; >1 means smaller/faster)."""
        b, a = self.before, self.after
        drop = None if b.accuracy is None or a.accuracy is None else 100.0 * (b.accuracy - a.accuracy)
        return {"accuracy_drop_points": drop,
                "size_ratio": b.size_bytes / max(a.size_bytes, 1),
                "compressed_size_ratio": b.compressed_bytes / max(a.compressed_bytes, 1),
                "latency_ratio": b.latency_ms / max(a.latency_ms, 1e-9)}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config, "before": asdict(self.before),
                "after": asdict(self.after), "cost": self.cost(), "details": self.details,
                "seconds": self.seconds}


def predict_logits(model: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The model's outputs on ``x`` in eval mode, as float32 numpy."""
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(model(torch.as_tensor(x[i:i + batch])).float().numpy())
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def _size(model: Any) -> tuple[int, int]:
    import lzma

    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    raw = buf.getvalue()
    return len(raw), len(lzma.compress(raw, preset=6))


def _latency(model: Any, x1: np.ndarray, runs: int) -> float:
    import torch

    model.eval()
    t = torch.as_tensor(x1)
    times = []
    with torch.no_grad():
        for _ in range(3):
            model(t)
        for _ in range(runs):
            s = time.perf_counter()
            model(t)
            times.append((time.perf_counter() - s) * 1e3)
    return float(np.median(times))


def measure(model: Any, x: np.ndarray | None, y: np.ndarray | None = None,
            reference: np.ndarray | None = None, latency_runs: int = 20,
            latency_x: np.ndarray | None = None) -> ModelMetrics:
    """Accuracy (with labels), agreement with ``reference`` logits, size and latency of a torch model."""
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    raw, comp = _size(model)
    acc = agree = None
    lat = float("nan")
    if x is not None and len(x):
        logits = predict_logits(model, x)
        pred = logits.argmax(-1)
        if y is not None:
            acc = float((pred == np.asarray(y)).mean())
        if reference is not None:
            agree = float((pred == reference.argmax(-1)).mean())
    lx = latency_x if latency_x is not None else (x if x is not None and len(x) else None)
    if lx is not None:
        lat = _latency(model, lx[:1], latency_runs)
    return ModelMetrics(acc, agree, params, nonzero, raw, comp, lat)
