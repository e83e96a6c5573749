from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from converters import _onnx_eval, _tflite_eval
from converters._compress_errors import SparsityRangeError, UnprunableLayerError
from converters._prune_structured import StructuredPruneConfig, run


def test_channels_are_really_removed(teacher, digits):
    xtr, ytr, xte, yte = digits
    pruned, rep = run(teacher, StructuredPruneConfig(ratio=0.5, finetune_epochs=2), example=xte, train_x=xtr,
                      train_y=ytr, eval_x=xte, eval_y=yte)
    d = rep.details
    assert d["params_after"] < 0.4 * d["params_before"]
    assert d["macs_after"] < 0.4 * d["macs_before"]
    convs = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [8, 16, 16]  # 16/32/32 halved
    assert [m for m in pruned.modules() if isinstance(m, nn.Linear)][-1].out_features == 10
    assert rep.after.accuracy >= rep.before.accuracy - 0.05
    assert rep.details["latency_ms_before"] > 0 and rep.details["latency_ms_after"] > 0
    dense, small = _onnx_eval.export(teacher, xte), _onnx_eval.export(pruned, xte)
    assert len(small) < 0.4 * len(dense)


@pytest.mark.slow
def test_pruned_tflite_stores_fewer_weights_and_matches_the_pruned_model_in_litert(teacher, digits):
    xtr, ytr, xte, yte = digits
    pruned, rep = run(teacher, StructuredPruneConfig(ratio=0.5), example=xte)
    dense, small = _tflite_eval.export(teacher, xte), _tflite_eval.export(pruned, xte)
    # the counter reads the flatbuffer: the dense file stores the torch weights (batch norm folded into the convs)
    n_torch = sum(p.numel() for p in teacher.parameters())
    bn = sum(p.numel() for m in teacher.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert _tflite_eval.param_count(dense) == n_torch - bn
    assert _tflite_eval.param_count(small) == rep.details["params_after"] - bn // 2
    assert _tflite_eval.param_count(small) < 0.4 * _tflite_eval.param_count(dense)
    assert len(small) < 0.4 * len(dense)
    with torch.no_grad():
        ref = pruned(torch.as_tensor(xte)).numpy()
    r = _tflite_eval.evaluate(small, xte, yte, ref=ref, runs=5)
    assert r["max_abs"] < 1e-4 and r["agreement"] == 1.0
    assert r["latency"]["p50_ms"] > 0


class _FixedReshape(nn.Module):
    """A head that hard-codes its input's channel count: the dependency graph cannot see it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8 * 64, 10)

    def forward(self, x):
        return self.fc(x.reshape(x.shape[0], 8 * 64))


def test_layer_the_graph_cannot_handle_is_named_and_model_untouched(digits):
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                      _FixedReshape())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(UnprunableLayerError, match="layer '4'") as e:
        run(m, StructuredPruneConfig(ratio=0.5), example=digits[2])
    assert e.value.layer == "4" and e.value.exit_code == 7
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("bad", [-0.2, 1.0, 2])
def test_ratio_outside_zero_one_is_rejected(bad):
    with pytest.raises(SparsityRangeError):
        StructuredPruneConfig(ratio=bad)


def test_ignored_layers_keep_their_width(teacher, digits):
    pruned, _ = run(teacher, StructuredPruneConfig(ratio=0.5, ignore=("0",)), example=digits[2])
    assert pruned[0].out_channels == 16


def test_unknown_ignored_layer_is_a_config_error(teacher, digits):
    from edgepack import ConfigError

    with pytest.raises(ConfigError, match="nope"):
        run(teacher, StructuredPruneConfig(ratio=0.5, ignore=("nope",)), example=digits[2])


class _Attention(nn.Module):
    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_heads = heads
        self.q, self.k, self.v, self.proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (f(x).reshape(b, n, self.num_heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        a = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, -1))


class _TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.att, self.out = nn.Linear(4, 32), _Attention(), nn.Linear(32, 3)

    def forward(self, x):
        return self.out(self.att(self.emb(x)).mean(1))


def test_attention_heads_are_removed_and_num_heads_follows():
    torch.manual_seed(0)
    m = _TinyTransformer()
    x = torch.randn(6, 5, 4).numpy()
    pruned, rep = run(m, StructuredPruneConfig(ratio=0.5, attention=("att",), heads_ratio=0.5,
                                               ignore=("emb", "att.proj")), example=x)
    assert pruned.att.num_heads == 2 and rep.details["heads"] == {"att": 2}
    assert pruned.att.q.out_features == 16 and pruned.att.proj.in_features == 16
    assert pruned(torch.as_tensor(x)).shape == (6, 3)
    assert rep.details["params_after"] < rep.details["params_before"]


def test_attention_name_without_qkv_is_a_config_error(teacher, digits):
    from edgepack import ConfigError

    with pytest.raises(ConfigError, match="attention '0'"):
        run(teacher, StructuredPruneConfig(ratio=0.3, attention=("0",), heads_ratio=0.5), example=digits[2])
