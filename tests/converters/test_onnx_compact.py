"""The ONNX compaction pass makes int8 artifacts smaller without changing one output bit."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from converters import _onnx_compact, _quantize_onnx
from converters._artifacts import onnx_input_name


@pytest.fixture(scope="module")
def qdq(torch_build, digits):
    """The digits CNN's fp32 artifact, quantized (QDQ, per-channel) with and without compaction."""
    import zipfile
    with zipfile.ZipFile(torch_build.bundle) as z:
        fp32 = z.read("artifacts/digits.fp32.onnx")
    with tempfile.TemporaryDirectory() as d:
        prep = _quantize_onnx.pre_process(fp32, Path(d))
    name = onnx_input_name(prep)
    cfg = _quantize_onnx.OnnxQuantizeConfig(calibration=digits["x_cal"], input_name=name, pre_process=False,
                                            compact=False)
    plain = _quantize_onnx.run(prep, cfg)
    return plain, _onnx_compact.run(plain), name


def _out(data: bytes, name: str, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {name: x})[0]


def test_compacted_int8_outputs_are_bit_identical_and_smaller(qdq, digits):
    plain, small, name = qdq
    x = digits["x_eval"]
    assert np.array_equal(_out(plain, name, x).view(np.uint32), _out(small, name, x).view(np.uint32))
    assert len(small) < len(plain)


def test_all_zero_weight_and_bias_zero_points_are_gone(qdq):
    plain, small, _ = qdq
    before, after = onnx.load_from_string(plain).graph, onnx.load_from_string(small).graph
    inits = {t.name for t in after.initializer}
    const_dq = [n for n in after.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert const_dq and all(len(n.input) == 2 for n in const_dq)
    n_zp = sum(1 for n in before.node if n.op_type == "DequantizeLinear" and len(n.input) == 3
               and n.input[0] in {t.name for t in before.initializer})
    assert n_zp == len(const_dq)  # ORT had stored one for each; all were zero


def test_bias_scales_become_the_product_of_input_and_weight_scale(qdq):
    _, small, _ = qdq
    g = onnx.load_from_string(small).graph
    producer = {o: n for n in g.node for o in n.output}
    convs = [n for n in g.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2]
    assert convs
    for c in convs:
        bias_dq = producer[c.input[2]]
        mul = producer[bias_dq.input[1]]
        assert mul.op_type == "Mul"
        assert set(mul.input) == {producer[c.input[0]].input[1], producer[c.input[1]].input[1]}


def test_compute_node_names_survive_for_nodes_to_exclude(qdq):
    plain, small, _ = qdq
    names = {n.name for n in onnx.load_from_string(plain).graph.node
             if n.op_type not in ("QuantizeLinear", "DequantizeLinear")}
    assert names <= {n.name for n in onnx.load_from_string(small).graph.node}


def test_exporter_metadata_is_stripped_from_fp32_artifacts(torch_build):
    import zipfile
    with zipfile.ZipFile(torch_build.bundle) as z:
        g = onnx.load_from_string(z.read("artifacts/digits.fp32.onnx")).graph
    assert not any(n.metadata_props for n in g.node)
