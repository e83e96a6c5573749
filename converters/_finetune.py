"""Training loop shared by the compression passes, and the ``[finetune]`` pass.

Loss: cross-entropy on labels, or, when a ``teacher`` is given, KL divergence
on temperature-softened logits times T^2 (Hinton et al. 2015: the T^2 keeps
the soft-target gradients on the same scale as the hard ones when T changes)
plus ``alpha`` x cross-entropy when labels exist. Without labels only the KL
term is used, so unlabeled data is enough. Deterministic under ``seed``:
``torch.manual_seed`` plus ``torch.use_deterministic_algorithms``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgepack import ConfigError
from edgepack._term import progress

from ._passreport import PassReport, measure, predict_logits

__all__ = ["FinetuneConfig", "distill_loss", "run", "seeded", "train", "zero_keeper"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Recipe section ``[finetune]``: recover accuracy after pruning."""

    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64
    #: used when a teacher is given (self-distillation from the uncompressed model)
    temperature: float = 4.0
    alpha: float = 0.5
    patience: int = 3
    #: keep weights that are exactly zero at zero (a pruned model stays as sparse as the [prune] pass left it)
    keep_zeros: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.lr <= 0 or self.batch_size < 1 or self.temperature <= 0:
            raise ConfigError("[finetune] needs epochs >= 0, lr > 0, batch_size >= 1, temperature > 0",
                              where="[finetune]")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"[finetune] alpha must be in [0, 1], got {self.alpha}", where="[finetune] alpha")


def seeded(seed: int) -> None:
    """Seed torch and numpy and ask torch for deterministic kernels."""
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def distill_loss(student_logits: Any, teacher_logits: Any, labels: Any | None, temperature: float,
                 alpha: float) -> Any:
    """KL(teacher_T || student_T) x T^2, plus alpha x CE(labels) when labels exist."""
    import torch.nn.functional as F

    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                  reduction="batchmean", log_target=True) * (t * t)
    if labels is None:
        return kl
    return (1.0 - alpha) * kl + alpha * F.cross_entropy(student_logits, labels)


def train(model: Any, x: np.ndarray, y: np.ndarray | None, *, epochs: int, lr: float, batch_size: int, seed: int,
          teacher_logits: np.ndarray | None = None, temperature: float = 4.0, alpha: float = 0.5,
          score: Callable[[Any], float] | None = None, patience: int = 0, desc: str = "train",
          step_hook: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Train ``model`` in place; with ``score`` (higher is better) keep the best epoch and stop
    after ``patience`` epochs without improvement. Returns a history dict.

    Raises:
        ConfigError: neither labels nor teacher logits (nothing to learn from).
    """
    import torch
    import torch.nn.functional as F

    if y is None and teacher_logits is None:
        raise ConfigError("training needs labels or a teacher's logits", where=desc,
                          hint="pass labelled data or a teacher model")
    seeded(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt = torch.as_tensor(x)
    yt = None if y is None else torch.as_tensor(np.asarray(y), dtype=torch.long)
    tt = None if teacher_logits is None else torch.as_tensor(teacher_logits)
    best, best_state, bad, history = -np.inf, None, 0, []
    for epoch in progress(range(epochs), desc, total=epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(batch_size):
            out = model(xt[idx])
            lab = None if yt is None else yt[idx]
            if tt is None:
                # labels exist whenever there is no teacher (checked above)
                loss = F.cross_entropy(out, lab)  # type: ignore[arg-type]
            else:
                loss = distill_loss(out, tt[idx], lab, temperature, alpha)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step_hook is not None:
                step_hook(model)
        s = score(model) if score is not None else None
        history.append({"epoch": epoch, "loss": float(loss.detach()), "score": s})
        if s is None:
            continue
        if s > best:
            best, best_state, bad = s, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if patience and bad >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"epochs_run": len(history), "best_score": None if best_state is None else float(best),
            "history": history}


def run(model: Any, config: FinetuneConfig | None = None, *, train_x: np.ndarray, train_y: np.ndarray | None = None,
        eval_x: np.ndarray | None = None, eval_y: np.ndarray | None = None,
        teacher: Any = None) -> tuple[Any, PassReport]:
    """The ``[finetune]`` pass: train ``model`` further; distil from ``teacher`` when given (or when
    there are no labels), keeping the best epoch on eval accuracy (or teacher agreement).

    Raises:
        ConfigError: no labels and no teacher.
    """
    cfg = config or FinetuneConfig()
    start = time.monotonic()
    ref = predict_logits(teacher, eval_x) if teacher is not None and eval_x is not None else None
    before = measure(model, eval_x, eval_y, ref)
    t_logits = predict_logits(teacher, train_x) if teacher is not None else None
    hist = train(model, train_x, train_y, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
                 teacher_logits=t_logits, temperature=cfg.temperature, alpha=cfg.alpha,
                 score=_scorer(eval_x, eval_y, ref), patience=cfg.patience, desc="finetune",
                 step_hook=zero_keeper(model) if cfg.keep_zeros else None)
    after = measure(model, eval_x, eval_y, ref)
    return model, PassReport("finetune", asdict(cfg), before, after, hist, time.monotonic() - start)


def zero_keeper(model: Any) -> Callable[[Any], None]:
    """A step hook that re-zeroes the weights of Conv/Linear layers that are zero now."""
    import torch
    import torch.nn as nn

    masks = [(m.weight, m.weight != 0) for m in model.modules()
             if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and bool((m.weight == 0).any())]

    def hook(_model: Any) -> None:
        with torch.no_grad():
            for w, keep in masks:
                w.mul_(keep)

    return hook


def _scorer(x: np.ndarray | None, y: np.ndarray | None, ref: np.ndarray | None) -> Callable[[Any], float] | None:
    if x is None or (y is None and ref is None):
        return None
    target = np.asarray(y) if y is not None else ref.argmax(-1)  # type: ignore[union-attr]
    return lambda m: float((predict_logits(m, x).argmax(-1) == target).mean())
