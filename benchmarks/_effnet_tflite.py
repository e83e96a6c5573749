"""LiteRT (TFLite) conversions of EfficientNet-Lite0 for the benchmarks.

Three ways to a .tflite file, all through the tools edgepack uses:

* ``convert_fp32``: ``litert_torch.convert`` with its defaults (the "default
  LiteRT conversion" the benchmark compares against);
* ``convert_int8_pt2e``: PyTorch PT2E static quantization with litert-torch's
  ``PT2EQuantizer`` (symmetric int8, per-channel or per-tensor weights), then
  ``litert_torch.convert`` with the matching ``QuantConfig``;
* ``convert_int8_aeq``: ai-edge-quantizer's ``static_wi8_ai8`` recipe applied to
  the fp32 .tflite, calibrated with LiteRT itself.
"""

from __future__ import annotations

import numpy as np

__all__ = ["convert_fp32", "convert_int8_aeq", "convert_int8_pt2e"]


def convert_fp32(model) -> bytes:
    import litert_torch
    import torch

    edge = litert_torch.convert(model.eval(), (torch.zeros(1, 3, 224, 224),))
    return bytes(edge.model_content())


def convert_int8_pt2e(model, calib: np.ndarray, *, per_channel: bool = True) -> bytes:
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    args = (torch.zeros(1, 3, 224, 224),)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=False)
    )
    with torch.no_grad():
        gm = torch.export.export(model.eval(), args).module()
        gm = quantize_pt2e.prepare_pt2e(gm, quantizer)
        for i in range(len(calib)):
            gm(torch.from_numpy(calib[i : i + 1]))
        gm = quantize_pt2e.convert_pt2e(gm, fold_quantize=False)
    edge = litert_torch.convert(gm, args, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return bytes(edge.model_content())


def convert_int8_aeq(fp32_tflite: bytes, calib: np.ndarray, *, threads: int = 2) -> bytes:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    sigs = Interpreter(model_content=fp32_tflite).get_signature_list()
    sig = next(iter(sigs))
    name = sigs[sig]["inputs"][0]
    q = quantizer.Quantizer(bytearray(fp32_tflite), recipe.static_wi8_ai8())
    data = {sig: [{name: calib[i : i + 1]} for i in range(len(calib))]}
    result = q.quantize(q.calibrate(data, num_threads=threads), enable_progress_report=False)
    return bytes(result.quantized_model)
