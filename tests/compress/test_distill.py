from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from converters._compress_errors import StudentDerivationError, StudentMismatchError
from converters._distill import DistillConfig, derive_student, run
from converters._finetune import distill_loss
from converters._passreport import predict_logits


def test_loss_is_kl_times_t_squared_without_labels():
    torch.manual_seed(0)
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    T = 3.0
    expected = (F.softmax(t / T, -1) * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert torch.allclose(distill_loss(s, t, None, T, 0.5), expected, atol=1e-6)
    assert float(distill_loss(t, t, None, T, 0.5)) == pytest.approx(0.0, abs=1e-6)


def test_loss_mixes_alpha_cross_entropy_when_labels_exist():
    torch.manual_seed(1)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    kl = distill_loss(s, t, None, 2.0, 0.0)
    mixed = distill_loss(s, t, y, 2.0, 0.25)
    assert torch.allclose(mixed, 0.75 * kl + 0.25 * F.cross_entropy(s, y), atol=1e-6)


def test_derived_student_scales_hidden_widths_and_keeps_io(teacher, digits):
    s = derive_student(teacher, 0.5)
    convs = [m for m in s.modules() if isinstance(m, nn.Conv2d)]
    tconvs = [m for m in teacher.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [t.out_channels // 2 for t in tconvs]
    assert convs[0].in_channels == 1
    assert predict_logits(s, digits[2][:3]).shape == (3, 10)
    ratio = sum(p.numel() for p in teacher.parameters()) / sum(p.numel() for p in s.parameters())
    assert 3.0 < ratio < 4.5  # widths halve, so weights (in x out) shrink ~4x


def test_distilled_student_is_smaller_and_keeps_accuracy(teacher, digits):
    xtr, ytr, xte, yte = digits
    student, rep = run(teacher, DistillConfig(width_multiplier=0.5, epochs=15), train_x=xtr, train_y=ytr,
                       eval_x=xte, eval_y=yte)
    assert rep.before.accuracy > 0.95
    assert rep.after.accuracy >= rep.before.accuracy - 0.03
    assert rep.cost()["size_ratio"] > 3.0
    assert rep.after.params < rep.before.params
    assert rep.after.latency_ms > 0 and rep.before.latency_ms > 0


def test_unlabeled_distillation_learns_the_teacher(teacher, digits):
    xtr, _, xte, _ = digits
    student, rep = run(teacher, DistillConfig(width_multiplier=0.5, epochs=12), train_x=xtr, eval_x=xte)
    assert rep.after.accuracy is None
    assert rep.after.agreement >= 0.9
    assert rep.details["eval_metric"] == "teacher_agreement"


def test_distillation_is_deterministic_under_a_seed(teacher, digits):
    xtr, ytr, _, _ = digits
    cfg = DistillConfig(epochs=2, seed=7)
    a, _ = run(teacher, cfg, train_x=xtr[:300], train_y=ytr[:300])
    b, _ = run(teacher, cfg, train_x=xtr[:300], train_y=ytr[:300])
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_early_stopping_stops_and_restores_the_best_epoch(teacher, digits):
    xtr, ytr, xte, yte = digits
    student, rep = run(teacher, DistillConfig(epochs=200, patience=2), train_x=xtr, train_y=ytr,
                       eval_x=xte, eval_y=yte)
    assert rep.details["epochs_run"] < 200
    assert rep.after.accuracy == pytest.approx(rep.details["best_score"])


def test_student_with_other_output_shape_is_rejected(teacher, digits):
    bad = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    with pytest.raises(StudentMismatchError, match=r"\(2, 5\).*\(2, 10\)") as e:
        run(teacher, DistillConfig(epochs=1), train_x=digits[0], train_y=digits[1], student=bad)
    assert e.value.exit_code == 7


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


@pytest.mark.parametrize("model, layer", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), _Residual(), nn.Flatten(), nn.Linear(144, 10)), "1"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(64, 10)), "1"),
    (_Residual(), "<model>"),
])
def test_width_derivation_names_the_layer_it_cannot_scale(model, layer):
    with pytest.raises(StudentDerivationError) as e:
        derive_student(model, 0.5)
    assert e.value.layer == layer


def test_bad_width_multiplier_is_a_config_error():
    from edgepack import ConfigError

    with pytest.raises(ConfigError, match="width_multiplier"):
        DistillConfig(width_multiplier=1.5)


def test_given_student_is_used(teacher, digits):
    xtr, ytr, _, _ = digits
    mine = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    out, rep = run(teacher, DistillConfig(epochs=2), train_x=xtr, train_y=ytr, student=mine)
    assert out is mine and rep.details["student"] == "given"
    assert np.isfinite(predict_logits(out, xtr[:4])).all()
