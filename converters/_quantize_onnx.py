"""Quantize an fp32 ONNX model: fp16 (onnxconverter-common), int8 dynamic
(ORT ``quantize_dynamic``) and int8 static (ORT ``quantize_static``, QDQ,
per-channel, a choice of calibration method, after ``quant_pre_process``).

Why ORT's quantizer and not neural-compressor: INC 3.x's ONNX adaptor wraps
the same ORT quantizer, and its accuracy-aware ``autotune`` searches configs
by re-running an eval function many times. Our parity check plus
``_localize``'s targeted node exclusion (``--auto-fix``) gives the same
"meet the accuracy budget" loop with a bounded, logged number of tries, and
it names the node it kept in float. See docs/build.md.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import _onnx_compact
from ._errors import CalibrationRequiredError, UnsupportedError

__all__ = ["OnnxQuantizeConfig", "int8_settings", "run"]


@dataclass(frozen=True)
class OnnxQuantizeConfig:
    precision: str = "int8-static"
    calibration: np.ndarray | None = None
    input_name: str = "input"
    calibration_method: str = "minmax"
    per_channel: bool = True
    pre_process: bool = True
    activation_type: str = "auto"
    quant_format: str = "auto"
    reduce_range: str = "auto"
    nodes_to_exclude: tuple[str, ...] = field(default=())
    #: a JSON file of calibrated tensor ranges (ORT ``calibration_cache_path``): written by the
    #: first run, read by the next ones, so ``--auto-fix`` re-quantizes without re-calibrating
    calibration_cache: str | None = None
    #: apply ``converters._onnx_compact`` to the result (exact: outputs are bit-identical)
    compact: bool = True


def int8_settings(cfg: OnnxQuantizeConfig) -> dict[str, object]:
    """Resolve "auto" int8 settings from the CPU guardrail (``converters._cpu``).

    Measured here: signed int8 activations made EfficientNet-Lite0 3.5x slower
    than fp32 under ORT; unsigned matched it. So without a CPU probe we keep
    ORT's fast default: QDQ, uint8 activations, int8 weights, no reduce_range.
    """
    rec: dict[str, object] = {"activation_type": "uint8", "quant_format": "qdq", "reduce_range": False,
                              "per_channel": cfg.per_channel, "source": "default"}
    try:
        from . import _cpu
        found = _cpu.recommend_ort_int8()
        rec.update({k: v for k, v in _normalise_cpu_rec(found).items() if v is not None}, source="converters._cpu",
                   isa=getattr(found, "isa", None), measured=getattr(found, "measured", None))
    except (ImportError, AttributeError):
        pass  # the guardrail module is optional; the defaults above are the measured-safe choice
    if cfg.activation_type != "auto":
        rec["activation_type"] = cfg.activation_type
    if cfg.quant_format != "auto":
        rec["quant_format"] = cfg.quant_format
    if cfg.reduce_range != "auto":
        rec["reduce_range"] = str(cfg.reduce_range).lower() == "true"
    return rec


def _normalise_cpu_rec(found: object) -> dict[str, object]:
    d = found if isinstance(found, dict) else getattr(found, "__dict__", {})
    out: dict[str, object] = {}
    act = d.get("activation_type")
    if act is not None:
        out["activation_type"] = "int8" if "int8" in str(act).lower() and "uint" not in str(act).lower() else "uint8"
    fmt = d.get("quant_format")
    if fmt is not None:
        out["quant_format"] = "qoperator" if "operator" in str(fmt).lower() else "qdq"
    if "reduce_range" in d:
        out["reduce_range"] = bool(d["reduce_range"])
    if "per_channel" in d:
        out["per_channel"] = bool(d["per_channel"])
    return out


class _Reader:
    def __init__(self, name: str, xs: np.ndarray) -> None:
        self._it = iter([{name: xs[i:i + 1]} for i in range(len(xs))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _fp16(data: bytes) -> bytes:
    import onnx
    from onnxconverter_common import float16
    model = onnx.load_from_string(data)
    # keep_io_types: the device feeds float32 as io says; casts sit inside the graph
    return float16.convert_float_to_float16(model, keep_io_types=True).SerializeToString()


def _dynamic(data: bytes, cfg: OnnxQuantizeConfig, tmp: Path) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    src, out = tmp / "in.onnx", tmp / "out.onnx"
    src.write_bytes(data)
    quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, per_channel=cfg.per_channel,
                     nodes_to_exclude=list(cfg.nodes_to_exclude))
    return out.read_bytes()


def pre_process(data: bytes, tmp: Path) -> bytes:
    """ORT ``quant_pre_process``: shape inference and fusions before calibration."""
    from onnxruntime.quantization.shape_inference import quant_pre_process
    src, out = tmp / "pre_in.onnx", tmp / "pre_out.onnx"
    src.write_bytes(data)
    quant_pre_process(str(src), str(out), skip_symbolic_shape=False)
    return out.read_bytes()


def _static(data: bytes, cfg: OnnxQuantizeConfig, tmp: Path) -> bytes:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    if cfg.calibration is None:
        raise CalibrationRequiredError("int8-static needs calibration data", hint="pass --calibration DATA")
    s = int8_settings(cfg)
    if cfg.pre_process:
        data = pre_process(data, tmp)
    src, out = tmp / "in.onnx", tmp / "out.onnx"
    src.write_bytes(data)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.calibration_method]
    act = QuantType.QUInt8 if s["activation_type"] == "uint8" else QuantType.QInt8
    quantize_static(
        str(src), str(out), _Reader(cfg.input_name, cfg.calibration.astype(np.float32)),
        quant_format=QuantFormat.QDQ if s["quant_format"] == "qdq" else QuantFormat.QOperator,
        per_channel=bool(s["per_channel"]), reduce_range=bool(s["reduce_range"]),
        activation_type=act, weight_type=QuantType.QInt8, calibrate_method=method,
        nodes_to_exclude=list(cfg.nodes_to_exclude), calibration_cache_path=cfg.calibration_cache,
    )
    return out.read_bytes()


def run(data: bytes, config: OnnxQuantizeConfig) -> bytes:
    """The quantized ONNX bytes for fp32 ``data``.

    Raises:
        CalibrationRequiredError: int8-static without calibration data.
        UnsupportedError: an unknown precision, or ORT's quantizer failed.
    """
    with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(io.StringIO()):
        logging.getLogger("root").setLevel(logging.ERROR)  # ORT's quantizer logs at INFO on the root logger
        tmp = Path(d)
        passes = {"fp16": lambda: _fp16(data), "int8-dynamic": lambda: _dynamic(data, config, tmp),
                  "int8-static": lambda: _static(data, config, tmp)}
        if config.precision not in passes:
            raise UnsupportedError(f"no ONNX quantizer for precision {config.precision!r}")
        try:
            out = passes[config.precision]()
        except (ValueError, RuntimeError) as e:  # ORT quantizer raises these for graphs it cannot handle
            raise UnsupportedError(f"onnxruntime could not quantize to {config.precision}: {e}") from e
    return _onnx_compact.run(out) if config.compact else out
