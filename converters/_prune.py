"""The ``[prune]`` pass: unstructured magnitude pruning to a target sparsity.

Global (one threshold across all layers) or per layer (each layer to the same
sparsity), reached on the polynomial schedule of Zhu & Gupta 2017
(s_t = s_f (1 - (1 - t/n)^power)) with fine-tuning between steps, so the net
recovers from each cut before the next. Masks are made permanent with
``torch.nn.utils.prune.remove``: the result has plain weights with zeros and
no ``weight_orig``/``weight_mask`` or hooks, so nothing of the pruning reaches
the exported graph.

Unstructured zeros do not shrink a dense ONNX/TFLite file (the raw size is
unchanged); they shrink its *compressed* size, see ``_transport``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgepack import ConfigError

from ._compress_errors import SparsityRangeError
from ._finetune import _scorer, seeded, train
from ._passreport import PassReport, measure, predict_logits

__all__ = ["PruneConfig", "check_sparsity", "run", "schedule", "sparsity_of"]

SCOPES = ("global", "layer")


def check_sparsity(value: float, where: str) -> None:
    """Raises: SparsityRangeError unless 0 <= value < 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise SparsityRangeError(f"sparsity must be in [0, 1), got {value!r}", where=where,
                                 hint="0.8 removes 80% of the weights; 1.0 would remove them all")


@dataclass(frozen=True)
class PruneConfig:
    """Recipe section ``[prune]``."""

    sparsity: float = 0.5
    scope: str = "global"  # global | layer
    steps: int = 4
    #: polynomial schedule exponent: 3 prunes fast early, when the net has most redundancy
    power: float = 3.0
    finetune_epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 64
    #: leave the final classifier dense: it is small, and pruning it costs the most accuracy
    skip_last: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity, "[prune] sparsity")
        if self.scope not in SCOPES:
            raise ConfigError(f"[prune] scope must be one of {SCOPES}, got {self.scope!r}", where="[prune] scope")
        if self.steps < 1 or self.power <= 0 or self.finetune_epochs < 0:
            raise ConfigError("[prune] needs steps >= 1, power > 0, finetune_epochs >= 0", where="[prune]")


def schedule(target: float, steps: int, power: float = 3.0) -> list[float]:
    """Sparsity after each of ``steps`` steps; the last equals ``target``."""
    return [target * (1.0 - (1.0 - t / steps) ** power) for t in range(1, steps + 1)]


def prunable(model: Any, skip_last: bool = True) -> list[tuple[str, Any]]:
    """(name, module) of every Conv/Linear weight the pass prunes."""
    import torch.nn as nn

    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    return mods[:-1] if skip_last and len(mods) > 1 else mods


def sparsity_of(model: Any, skip_last: bool = True) -> float:
    """Fraction of zero weights over the prunable layers."""
    total = zeros = 0
    for _, m in prunable(model, skip_last):
        total += m.weight.numel()
        zeros += int((m.weight == 0).sum())
    return zeros / max(total, 1)


def _step(mods: list[tuple[str, Any]], amount: float, scope: str) -> None:
    import torch.nn.utils.prune as tprune

    if amount <= 0:
        return
    if scope == "global":
        tprune.global_unstructured([(m, "weight") for _, m in mods], pruning_method=tprune.L1Unstructured,
                                   amount=amount)
    else:
        for _, m in mods:
            tprune.l1_unstructured(m, "weight", amount=amount)


def run(model: Any, config: PruneConfig | None = None, *, train_x: np.ndarray | None = None,
        train_y: np.ndarray | None = None, eval_x: np.ndarray | None = None,
        eval_y: np.ndarray | None = None) -> tuple[Any, PassReport]:
    """Prune ``model`` in place to ``config.sparsity`` and return it with its report.

    Without training data the steps run back to back (no recovery); without labels the
    fine-tuning distils from the model as it was before pruning.

    Raises:
        SparsityRangeError: a sparsity outside [0, 1).
    """
    import copy

    import torch.nn.utils.prune as tprune

    cfg = config or PruneConfig()
    start = time.monotonic()
    seeded(cfg.seed)
    ref = predict_logits(model, eval_x) if eval_x is not None else None
    before = measure(model, eval_x, eval_y, ref)
    teacher_logits = None
    if train_x is not None and train_y is None:
        teacher_logits = predict_logits(copy.deepcopy(model), train_x)
    mods = prunable(model, cfg.skip_last)
    reached, prev, steps = [], 0.0, schedule(cfg.sparsity, cfg.steps, cfg.power)
    for i, s in enumerate(steps):
        # PyTorch's PruningContainer applies a new amount to the weights still unpruned,
        # so step i removes the fraction of survivors that takes the total from prev to s
        _step(mods, 1.0 - (1.0 - s) / (1.0 - prev), cfg.scope)
        prev = s
        if train_x is not None and cfg.finetune_epochs:
            train(model, train_x, train_y, epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                  seed=cfg.seed + i, teacher_logits=teacher_logits, desc=f"prune step {i + 1}/{cfg.steps}",
                  score=_scorer(eval_x, eval_y, ref) if i == len(steps) - 1 else None)
        reached.append(sparsity_of(model, cfg.skip_last))
    for _, m in mods:
        if tprune.is_pruned(m):
            tprune.remove(m, "weight")
    after = measure(model, eval_x, eval_y, ref)
    details = {"schedule": steps, "sparsity_reached": reached, "final_sparsity": sparsity_of(model, cfg.skip_last),
               "layers": [n for n, _ in mods]}
    return model, PassReport("prune", asdict(cfg), before, after, details, time.monotonic() - start)
