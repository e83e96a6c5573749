"""Localization measures which node costs the output its accuracy, and --auto-fix keeps
exactly that node in float, even when the damage is the quantization of the graph input
(invisible to per-tensor SQNR: the input is exact in both models)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

import converters
from converters import _sensitivity


def _hostile_stem(torch_cnn):
    """The trained digits CNN behind a 2-channel stem: channel 0 is the digit, channel 1 a
    sensor reading of +-1000 the model ignores (its stem weights are exactly 0). Per-tensor
    uint8 input quantization then spends its 256 steps on +-1000 and rounds every digit
    pixel (0..1) to zero, while the float model is unaffected."""
    import copy

    import torch

    class HostileStem(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            net = copy.deepcopy(torch_cnn)
            self.stem = torch.nn.Conv2d(2, 8, 3, padding=1)
            with torch.no_grad():
                self.stem.weight.zero_()
                self.stem.weight[:, :1] = net.c1.weight
                self.stem.bias.copy_(net.c1.bias)
            self.c2, self.fc = net.c2, net.fc

        def forward(self, x):
            x = torch.nn.functional.max_pool2d(torch.relu(self.stem(x)), 2)
            x = torch.nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
            return self.fc(x.flatten(1))

    return HostileStem().eval()


def _with_sensor(x: np.ndarray, seed: int) -> np.ndarray:
    sensor = np.random.default_rng(seed).uniform(-1000, 1000, x.shape).astype(np.float32)
    return np.concatenate([x, sensor], axis=1)


@pytest.fixture(scope="module")
def hostile(torch_cnn, digits):
    return (_hostile_stem(torch_cnn), _with_sensor(digits["x_cal"], 0),
            (_with_sensor(digits["x_eval"], 1), digits["y_eval"]))


def _build(hostile, out, **build):
    model, cal, ev = hostile
    rec = {"build": {"targets": ["onnx"], **build}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converters.build(model, rec, out=out, calibration=cal, eval_data=ev)


@pytest.fixture(scope="module")
def failed(hostile, tmp_path_factory):
    with pytest.raises(converters.ParityFailedError) as ei:
        _build(hostile, tmp_path_factory.mktemp("hostile"))
    return next(a for a in ei.value.report["artifacts"] if a["name"] == "model.int8.onnx")


def _stem_name(model: bytes) -> str:
    return next(n.name for n in onnx.load_from_string(model).graph.node if n.op_type == "Conv")


def test_hostile_input_channel_breaks_int8(failed):
    assert failed["metrics"][0]["top1_agreement"] < 0.5


def test_localization_blames_the_stem_conv_by_measured_output_gain(failed):
    loc = failed["localization"]
    worst = loc["worst"]
    assert worst[0]["op_type"] == "Conv" and worst[0]["gain_db"] > 10
    # the stem is the first Conv in graph order; every other node gains far less
    assert all(w["gain_db"] < worst[0]["gain_db"] / 4 for w in worst[1:])
    sens = loc["sensitivity"]
    assert sens["measured"] == sens["candidates"] >= 3


def test_auto_fix_keeps_exactly_the_stem_in_float_and_passes(hostile, tmp_path):
    r = _build(hostile, tmp_path, auto_fix=True)
    row = next(a for a in r.artifacts if a["name"] == "model.int8.onnx")
    fix = row["auto_fix"]
    assert fix["passed"] and row["parity"]["passed"]
    assert row["parity"]["top1_agreement"] >= 0.95
    int8 = next(a for a in r.report["artifacts"] if a["name"] == "model.int8.onnx")
    assert int8["localization"]["worst"][0]["node"] == fix["kept_in_float"][0]
    assert len(fix["kept_in_float"]) == 1 and len(fix["tries"]) == 1
    import zipfile

    with zipfile.ZipFile(r.bundle) as z:
        data = z.read("artifacts/model.int8.onnx")
    g = onnx.load_from_string(data).graph
    producers = {o: n for n in g.node for o in n.output}
    stem = next(n for n in g.node if n.name == fix["kept_in_float"][0])
    assert stem.op_type == "Conv" and stem.input[0] == g.input[0].name  # reads the float image directly
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == g.input[0].name for n in g.node)
    # everything after the stem is still int8
    c2 = [n for n in g.node if n.op_type == "Conv" and n.name != stem.name]
    assert c2 and all(producers[i].op_type == "DequantizeLinear" for i in c2[0].input[:2])


def test_bypassing_every_node_reproduces_the_float_graph(hostile, tmp_path):
    """The sensitivity measurement itself: a bypassed node reads float weights and unrounded
    activations (keeping the clamp of an activation ORT folded into the Q range), so bypassing
    every quantized node gives the float graph's output; bypassing the stem alone ranks first."""
    import tempfile
    import zipfile
    from pathlib import Path

    import onnxruntime as ort

    from converters import _quantize_onnx
    from converters._artifacts import onnx_input_name

    model, cal, (x, _) = hostile
    r = _build(hostile, tmp_path, precisions=["fp32"])
    with zipfile.ZipFile(r.bundle) as z:
        fp32 = z.read("artifacts/model.fp32.onnx")
    with tempfile.TemporaryDirectory() as d:
        prep = _quantize_onnx.pre_process(fp32, Path(d))
    name = onnx_input_name(prep)
    q = _quantize_onnx.run(prep, _quantize_onnx.OnnxQuantizeConfig(calibration=cal, input_name=name,
                                                                     pre_process=False))
    ranking = _sensitivity.rank(q, prep, x, _sensitivity.SensitivityConfig(name))
    assert ranking["rows"][0]["node"] == _stem_name(prep)
    everything = [c[0] for c in _sensitivity.candidates(q)]
    xs = x[:32]
    ref = ort.InferenceSession(prep).run(None, {name: xs})[0]
    quant = ort.InferenceSession(q).run(None, {name: xs})[0]
    out = ort.InferenceSession(_sensitivity.bypass(q, prep, everything)).run(None, {name: xs})[0]
    sqnr = {k: 10 * np.log10((ref.astype(np.float64) ** 2).sum() / ((v - ref).astype(np.float64) ** 2).sum())
            for k, v in (("int8", quant), ("bypassed", out))}
    assert sqnr["int8"] < 5
    # all-bypassed is float again, up to the rounding of the graph OUTPUT's own Quantize/Dequantize
    # pair (no node reads it) and the calibrated ranges kept as clamps
    assert sqnr["bypassed"] > 30
    g = onnx.load_from_string(q).graph
    out_dq = next(n for n in g.node if n.output[0] == g.output[0].name)
    step = float(onnx.numpy_helper.to_array(next(t for t in g.initializer if t.name == out_dq.input[1])))
    assert np.median(np.abs(out - ref)) <= step / 2


def test_pinned_nodes_to_exclude_reproduce_the_fix_without_searching(hostile, failed, tmp_path):
    """``[onnx] nodes_to_exclude`` pins what a previous --auto-fix reported: no search, same fix."""
    stem = failed["localization"]["worst"][0]["node"]
    model, cal, ev = hostile
    rec = {"build": {"targets": ["onnx"], "precisions": ["int8-static"]}, "onnx": {"nodes_to_exclude": [stem]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = converters.build(model, rec, out=tmp_path, calibration=cal, eval_data=ev)
    row = r.artifacts[0]
    assert row["parity"]["passed"] and "auto_fix" not in row and "localization" not in row
    assert row["extra"]["nodes_kept_in_float"] == [stem]
