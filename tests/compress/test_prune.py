from __future__ import annotations

import onnx
import pytest
import torch.nn as nn
from onnx import numpy_helper

from converters import _onnx_eval, _transport
from converters._compress_errors import SparsityRangeError
from converters._prune import PruneConfig, prunable, run, schedule
from edgepack import BundleError, ConfigError


@pytest.mark.parametrize("target, steps", [(0.8, 4), (0.5, 3), (0.3, 1)])
def test_schedule_is_polynomial_increasing_and_ends_on_target(target, steps):
    s = schedule(target, steps, 3.0)
    assert len(s) == steps and s[-1] == pytest.approx(target)
    assert all(a < b for a, b in zip(s, s[1:], strict=False))
    if steps > 1:
        assert s[0] > target / steps  # front-loaded: cut most while the net is most redundant


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, True, "0.5"])
def test_sparsity_outside_zero_one_is_rejected(bad):
    with pytest.raises(SparsityRangeError, match="sparsity must be in \\[0, 1\\)") as e:
        PruneConfig(sparsity=bad)
    assert isinstance(e.value, ConfigError) and e.value.exit_code == 3
    assert e.value.where == "[prune] sparsity"


@pytest.fixture(scope="module")
def pruned(request, _teacher, digits):
    import copy

    xtr, ytr, xte, yte = digits
    out = {}
    for scope in ("global", "layer"):
        out[scope] = run(copy.deepcopy(_teacher), PruneConfig(sparsity=0.75, scope=scope, steps=3, finetune_epochs=1),
                         train_x=xtr, train_y=ytr, eval_x=xte, eval_y=yte)
    return out


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruning_reaches_target_sparsity_and_keeps_accuracy(pruned, scope):
    model, rep = pruned[scope]
    assert rep.details["final_sparsity"] == pytest.approx(0.75, abs=0.01)
    assert rep.details["sparsity_reached"][0] < rep.details["sparsity_reached"][-1]
    assert rep.after.accuracy >= rep.before.accuracy - 0.02
    if scope == "layer":
        for _, m in prunable(model):
            assert float((m.weight == 0).float().mean()) == pytest.approx(0.75, abs=0.01)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_masks_are_made_permanent(pruned, scope):
    model, _ = pruned[scope]
    keys = list(model.state_dict())
    assert not any(k.endswith(("_orig", "_mask")) for k in keys)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_exported_graph_has_no_mask_and_carries_the_zeros(pruned, digits):
    model, _ = pruned["global"]
    g = onnx.load_from_string(_onnx_eval.export(model, digits[2]))
    assert not [n for n in g.graph.node if n.op_type == "Mul"]  # a live mask would be weight * mask
    conv_w = [numpy_helper.to_array(i) for i in g.graph.initializer if i.dims and len(i.dims) == 4]
    zeros = sum(int((w == 0).sum()) for w in conv_w) / sum(w.size for w in conv_w)
    assert zeros > 0.6


def test_raw_size_stays_but_compressed_size_shrinks(pruned, _teacher, digits):
    model, _ = pruned["global"]
    dense = _transport.measure(_onnx_eval.export(_teacher, digits[2]))
    sparse = _transport.measure(_onnx_eval.export(model, digits[2]))
    assert abs(sparse["raw"] - dense["raw"]) < 0.02 * dense["raw"]
    assert sparse["xz"] < 0.6 * dense["xz"]
    assert _transport.sparse_bytes(model) < 0.5 * sum(p.numel() * 4 for p in model.parameters())


@pytest.mark.parametrize("codec", _transport.CODECS)
def test_transport_encoding_round_trips_and_refuses_inflation(codec):
    data = bytes(1000) + bytes(range(256)) * 4
    enc = _transport.encode(data, codec)
    assert len(enc) < len(data) and _transport.decode(enc, codec, len(data)) == data
    with pytest.raises(BundleError, match="more bytes"):
        _transport.decode(enc, codec, len(data) - 1)
    with pytest.raises(BundleError, match="fewer bytes"):
        _transport.decode(enc, codec, len(data) + 10)
    with pytest.raises(BundleError, match="corrupt"):
        _transport.decode(b"\x00garbage" * 4, codec, len(data))


def test_pruning_without_training_data_still_reaches_target(_teacher):
    import copy

    model, rep = run(copy.deepcopy(_teacher), PruneConfig(sparsity=0.5, steps=2))
    assert rep.details["final_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert rep.after.accuracy is None


def test_last_layer_stays_dense_by_default(pruned):
    model, _ = pruned["global"]
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert float((last.weight == 0).float().mean()) < 0.05
