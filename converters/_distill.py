"""The ``[distill]`` pass: train a smaller student to match a teacher.

The student is given, or derived from the teacher by a width multiplier
(``derive_student``). Loss and determinism: see ``_finetune.distill_loss`` and
``_finetune.seeded``. Early stopping keeps the best epoch on the eval metric:
accuracy when eval labels exist, else top-1 agreement with the teacher.

``derive_student`` limits: it rebuilds ``nn.Sequential`` nets (nested
Sequentials allowed) made of Conv2d / Linear / BatchNorm / activations /
pooling / Flatten / Dropout, scaling every hidden width and keeping the input
channels and the final layer's outputs. Anything else (residual blocks,
custom modules, grouped convs) raises ``StudentDerivationError`` naming the
layer; pass a hand-made ``student`` instead.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgepack import ConfigError

from ._compress_errors import StudentDerivationError, StudentMismatchError
from ._finetune import _scorer, seeded, train
from ._passreport import PassReport, measure, predict_logits

__all__ = ["DistillConfig", "derive_student", "run"]


@dataclass(frozen=True)
class DistillConfig:
    """Recipe section ``[distill]``."""

    temperature: float = 4.0
    #: weight of the cross-entropy term when labels exist (the KL term gets 1 - alpha)
    alpha: float = 0.3
    #: used only when no student is given: hidden widths x this
    width_multiplier: float = 0.5
    epochs: int = 40
    batch_size: int = 64
    lr: float = 3e-3
    #: stop after this many epochs without a better eval metric (0: never stop early)
    patience: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.width_multiplier <= 1.0:
            raise ConfigError(f"[distill] width_multiplier must be in (0, 1], got {self.width_multiplier}",
                              where="[distill] width_multiplier", hint="0.5 halves every hidden width")
        if self.temperature <= 0 or self.epochs < 0 or self.lr <= 0 or self.batch_size < 1:
            raise ConfigError("[distill] needs temperature > 0, epochs >= 0, lr > 0, batch_size >= 1",
                              where="[distill]")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"[distill] alpha must be in [0, 1], got {self.alpha}", where="[distill] alpha")


def _scaled(n: int, w: float) -> int:
    return max(1, int(round(n * w)))


def derive_student(teacher: Any, width_multiplier: float, seed: int = 0) -> Any:
    """A freshly initialised copy of ``teacher`` with hidden widths scaled.

    Raises:
        StudentDerivationError: a layer this rebuild does not know (named).
    """
    import torch.nn as nn

    seeded(seed)
    leaves = _flatten(teacher, "")
    last = max((i for i, (_, m) in enumerate(leaves) if isinstance(m, (nn.Conv2d, nn.Linear))), default=None)
    if last is None:
        raise StudentDerivationError("the teacher has no Conv2d or Linear layer to scale", layer="<model>")
    built: list[Any] = []
    chans: int | None = None
    old_chans = 1
    for i, (name, m) in enumerate(leaves):
        keep_out = i == last
        if isinstance(m, nn.Conv2d):
            if m.groups != 1:
                raise StudentDerivationError(f"grouped Conv2d '{name}' cannot be width-scaled here", layer=name,
                                             hint="pass a student model instead of width_multiplier")
            cin = m.in_channels if chans is None else chans
            cout = m.out_channels if keep_out else _scaled(m.out_channels, width_multiplier)
            built.append(nn.Conv2d(cin, cout, m.kernel_size, m.stride, m.padding, m.dilation, 1,  # type: ignore[arg-type]
                                   m.bias is not None, m.padding_mode))
            chans, old_chans = cout, m.out_channels
        elif isinstance(m, nn.Linear):
            cin = m.in_features
            if chans is not None:
                if m.in_features % old_chans:
                    raise StudentDerivationError(f"Linear '{name}' in_features {m.in_features} is not a multiple "
                                                 f"of the {old_chans} channels before it", layer=name)
                cin = m.in_features // old_chans * chans  # Flatten keeps the spatial size
            cout = m.out_features if keep_out else _scaled(m.out_features, width_multiplier)
            built.append(nn.Linear(cin, cout, m.bias is not None))
            chans, old_chans = cout, m.out_features
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            built.append(type(m)(chans if chans is not None else m.num_features, m.eps, m.momentum, m.affine))
        elif isinstance(m, _stateless()):
            built.append(copy.deepcopy(m))
        else:
            raise StudentDerivationError(f"layer '{name}' ({type(m).__name__}) cannot be width-scaled", layer=name,
                                         hint="pass a student model, or use nn.Sequential of Conv2d/Linear/"
                                              "BatchNorm/activation/pooling/Flatten/Dropout")
    return nn.Sequential(*built)


def _stateless() -> tuple[type, ...]:
    import torch.nn as nn

    return (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Hardswish, nn.ELU,
            nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Identity)


def _flatten(m: Any, prefix: str) -> list[tuple[str, Any]]:
    import torch.nn as nn

    if isinstance(m, nn.Sequential):
        out = []
        for n, c in m.named_children():
            out += _flatten(c, f"{prefix}.{n}" if prefix else n)
        return out
    if not prefix:
        raise StudentDerivationError(f"the teacher is a {type(m).__name__}, not an nn.Sequential", layer="<model>",
                                     hint="pass a student model instead of width_multiplier")
    return [(prefix, m)]


def check_student(teacher: Any, student: Any, x: np.ndarray) -> None:
    """Raises: StudentMismatchError when the output shapes differ on ``x[:2]``."""
    t, s = predict_logits(teacher, x[:2]), predict_logits(student, x[:2])
    if t.shape != s.shape:
        raise StudentMismatchError(f"the student outputs shape {tuple(s.shape)} but the teacher outputs "
                                   f"{tuple(t.shape)} for the same input", where="[distill] student",
                                   hint="give the student the same output layer size as the teacher")


def run(teacher: Any, config: DistillConfig | None = None, *, train_x: np.ndarray, train_y: np.ndarray | None = None,
        eval_x: np.ndarray | None = None, eval_y: np.ndarray | None = None,
        student: Any = None) -> tuple[Any, PassReport]:
    """Distil ``teacher`` into ``student`` (or a width-scaled copy). Labels are optional.

    Raises:
        StudentMismatchError: the student's output shape differs from the teacher's.
        StudentDerivationError: no student given and the teacher cannot be width-scaled.
    """
    cfg = config or DistillConfig()
    start = time.monotonic()
    teacher.eval()
    derived = student is None
    if student is None:
        student = derive_student(teacher, cfg.width_multiplier, cfg.seed)
    check_student(teacher, student, train_x)
    ref = predict_logits(teacher, eval_x) if eval_x is not None else None
    before = measure(teacher, eval_x, eval_y, ref)
    hist = train(student, train_x, train_y, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
                 teacher_logits=predict_logits(teacher, train_x), temperature=cfg.temperature, alpha=cfg.alpha,
                 score=_scorer(eval_x, eval_y, ref), patience=cfg.patience, desc="distill")
    after = measure(student, eval_x, eval_y, ref)
    details = {**hist, "eval_metric": "accuracy" if eval_y is not None else "teacher_agreement",
               "student": "derived" if derived else "given"}
    return student, PassReport("distill", asdict(cfg), before, after, details, time.monotonic() - start)
