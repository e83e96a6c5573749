"""Quantize an fp32 TFLite model that came from torch (litert-torch).

Keras sources are quantized inside TFLiteConverter (``_export_tflite``);
litert-torch output is a flatbuffer, so it goes through Google's
ai-edge-quantizer, which works on flatbuffers: fp16 weights (FLOAT_CASTING),
dynamic int8 (``dynamic_wi8_afp32``) and full int8 with a representative
dataset (``static_wi8_ai8``). The static recipe yields int8 input and output
tensors; the artifact entry records their scale and zero point (``io_quant``)
so the runtime (de)quantizes and ``predict`` stays float32.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

from ._errors import CalibrationRequiredError, UnsupportedError

__all__ = ["TfliteQuantizeConfig", "run"]


@dataclass(frozen=True)
class TfliteQuantizeConfig:
    precision: str = "int8-static"
    calibration: np.ndarray | None = None


def run(data: bytes, config: TfliteQuantizeConfig) -> bytes:
    """The quantized flatbuffer.

    Raises:
        CalibrationRequiredError: int8-static without calibration data.
        UnsupportedError: a precision this path does not produce, or a quantizer failure.
    """
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    q = quantizer.Quantizer(bytearray(data))
    if config.precision == "int8-dynamic":
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    elif config.precision == "int8-static":
        q.load_quantization_recipe(recipe.static_wi8_ai8())
    elif config.precision == "fp16":
        q.add_weight_only_config(regex=".*", operation_name="*", num_bits=16,
                                 algorithm_key=AlgorithmName.FLOAT_CASTING)
    else:
        raise UnsupportedError(f"no TFLite quantizer for precision {config.precision!r}")
    calib = None
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            if q.need_calibration:
                if config.calibration is None:
                    raise CalibrationRequiredError("int8-static needs calibration data",
                                                   hint="pass --calibration DATA")
                sigs = Interpreter(model_content=bytes(data)).get_signature_list()
                sig = next(iter(sigs))
                name = sigs[sig]["inputs"][0]
                xs = config.calibration.astype(np.float32)
                calib = q.calibrate({sig: [{name: xs[i:i + 1]} for i in range(len(xs))]}, num_threads=1)
            result = q.quantize(calib, enable_progress_report=False)
    except (ValueError, RuntimeError) as e:
        raise UnsupportedError(f"ai-edge-quantizer failed for {config.precision}: {e}") from e
    return bytes(result.quantized_model)
