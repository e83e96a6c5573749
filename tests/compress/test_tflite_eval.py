"""The TFLite side of the compression passes: litert-torch export, ai-edge-quantizer settings the
search tries (calibration range merge, int8 I/O), scored in ai-edge-litert's Interpreter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from converters import _tflite_eval
from converters._errors import UnsupportedError


@pytest.fixture(scope="module")
def fp32_tflite(_teacher, digits):
    return _tflite_eval.export(_teacher, digits[2])


@pytest.fixture(scope="module")
def calib_logits(_teacher, digits):
    with torch.no_grad():
        return _teacher(torch.as_tensor(digits[0][:128])).numpy()


def _output_range(data: bytes) -> tuple[float, float]:
    from ai_edge_litert.interpreter import Interpreter

    out = Interpreter(model_content=data).get_output_details()[0]
    scale, zp = out["quantization"]
    info = np.iinfo(out["dtype"])
    return (info.min - zp) * scale, (info.max - zp) * scale


def test_minmax_calibration_keeps_the_whole_range_moving_average_clips(fp32_tflite, digits, calib_logits):
    """ai-edge-quantizer's own calibration averages per-sample ranges (batch 1), so the calibration set's
    own extreme logits fall outside the int8 output range; ``minmax`` keeps them."""
    calib = digits[0][:128]
    lo, hi = calib_logits.min(), calib_logits.max()
    step = (hi - lo) / 255
    q_min = _tflite_eval.quantize(fp32_tflite, "int8-static", calib, method="minmax")
    q_ema = _tflite_eval.quantize(fp32_tflite, "int8-static", calib, method="moving_average")
    a, b = _output_range(q_min)
    assert a <= lo + step and b >= hi - step
    a, b = _output_range(q_ema)
    assert b - a < 0.9 * (hi - lo)


@pytest.mark.parametrize("int8_io, dtype", [(True, np.int8), (False, np.float32)])
def test_int8_io_setting_decides_the_interface_dtype(fp32_tflite, _teacher, digits, int8_io, dtype):
    from ai_edge_litert.interpreter import Interpreter

    xtr, _, xte, yte = digits
    q = _tflite_eval.quantize(fp32_tflite, "int8-static", xtr[:128], int8_io=int8_io)
    it = Interpreter(model_content=q)
    assert it.get_input_details()[0]["dtype"] == dtype and it.get_output_details()[0]["dtype"] == dtype
    assert np.int8 in {d["dtype"] for d in it.get_tensor_details()}  # quantized inside either way
    with torch.no_grad():
        ref = _teacher(torch.as_tensor(xte)).numpy()
    r = _tflite_eval.evaluate(q, xte, yte, ref=ref, runs=3)
    assert r["agreement"] >= 0.98 and r["size"] < 0.45 * len(fp32_tflite)


def test_unknown_tflite_calibration_method_is_refused(fp32_tflite, digits):
    with pytest.raises(UnsupportedError, match="calibration method 'kl'"):
        _tflite_eval.quantize(fp32_tflite, "int8-static", digits[0][:8], method="kl")
