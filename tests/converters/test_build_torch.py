"""The digits CNN (torch) built end to end: artifacts load in the device
runtimes, have the op types and dtypes their precision promises, match the
original model, and ship in a verifiable bundle with golden data and lineage."""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import pytest

from edgepack import verify_bundle


@pytest.fixture(scope="module")
def verified(torch_build, keys):
    return verify_bundle(torch_build.bundle, keys[1], keep_members=True)


def _onnx(verified, name):
    return onnx.load_from_string(verified.member(f"artifacts/{name}"))


def test_bundle_is_signed_and_verifies_with_every_artifact(torch_build, verified):
    assert torch_build.signed
    paths = sorted(a.path for a in verified.manifest.artifacts)
    assert paths == ["artifacts/digits.fp32.onnx", "artifacts/digits.fp32.tflite",
                     "artifacts/digits.int8.onnx", "artifacts/digits.int8.tflite"]


def test_fp32_onnx_has_a_dynamic_batch_and_float_weights(verified):
    m = _onnx(verified, "digits.fp32.onnx")
    dim0 = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    ops = {n.op_type for n in m.graph.node}
    assert "Conv" in ops and "QuantizeLinear" not in ops
    assert all(i.data_type == onnx.TensorProto.FLOAT for i in m.graph.initializer if len(i.dims) > 1)


def test_int8_onnx_is_qdq_per_channel_with_int8_weights(verified):
    m = _onnx(verified, "digits.int8.onnx")
    ops = [n.op_type for n in m.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    weights = [i for i in m.graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == onnx.TensorProto.INT8 for i in weights)
    # per-channel: a conv weight's scale is a vector, one per output channel
    scales = {i.name: i for i in m.graph.initializer}
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in {w.name for w in weights}]
    assert dq and all(len(scales[n.input[1]].dims) == 1 and scales[n.input[1]].dims[0] > 1 for n in dq)


def test_int8_tflite_has_int8_tensors_and_records_io_quant(verified):
    from ai_edge_litert.interpreter import Interpreter
    entry = verified.manifest.artifact("artifacts/digits.int8.tflite")
    it = Interpreter(model_content=verified.member(entry.path))
    dtypes = {d["dtype"] for d in it.get_tensor_details()}
    assert np.int8 in dtypes
    assert it.get_input_details()[0]["dtype"] == np.int8
    scale, zp = entry.unrecognized["io_quant"]["inputs"][0]
    assert scale > 0 and -128 <= zp <= 127
    assert entry.unrecognized["fixed_batch"] == 1


@pytest.mark.parametrize("name,precision", [("digits.fp32.onnx", "fp32"), ("digits.fp32.tflite", "fp32"),
                                            ("digits.int8.onnx", "int8-static"), ("digits.int8.tflite", "int8-static")])
def test_each_artifact_matches_the_original_model(torch_build, torch_cnn, digits, verified, name, precision):
    import torch

    from converters._runners import open_session, run_batched
    entry = verified.manifest.artifact(f"artifacts/{name}")
    assert entry.precision == precision and entry.parity["passed"] is True
    # recompute independently from the verified bytes and the live original model
    x = digits["x_eval"]
    ref = torch_cnn(torch.from_numpy(x)).detach().numpy()
    out = run_batched(open_session(entry.format, verified.member(entry.path)), [x])[0]
    agree = (out.argmax(1) == ref.argmax(1)).mean()
    if precision == "fp32":
        assert np.abs(out - ref).max() < 1e-4
        assert entry.parity["max_abs"] < 1e-4
    else:
        assert agree >= 0.95 and entry.parity["cosine"] >= 0.98
    assert entry.parity["top1_agreement"] == pytest.approx(agree)
    assert abs(entry.parity["accuracy_delta"]) <= 0.02


def test_golden_holds_inputs_original_outputs_and_each_artifacts_outputs(verified):
    g = np.load(io.BytesIO(verified.member("golden/golden.npz")), allow_pickle=False)
    assert g["in__input"].shape == (4, 1, 8, 8)
    assert g["out__logits"].shape == (4, 10)
    for a in verified.manifest.artifacts:
        name = a.path.removeprefix("artifacts/")
        assert g[f"{name}__logits"].shape == (4, 10)
    np.testing.assert_allclose(g["digits.fp32.onnx__logits"], g["out__logits"], atol=1e-4)


def test_manifest_io_and_lineage_follow_the_contract(verified, torch_build):
    io_ = verified.manifest.io
    inp = io_["inputs"][0]
    assert inp["shape"] == ["batch", 1, 8, 8] and inp["dtype"] == "float32" and inp["layout"] == "NCHW"
    assert inp["range"] == {"min": 0.0, "max": 1.0}
    assert len(inp["reference"]["edges"]) == 11 and abs(sum(inp["reference"]["probs"]) - 1) < 1e-6
    assert io_["outputs"] == [{"name": "logits", "shape": ["batch", 10], "dtype": "float32"}]
    lin = verified.manifest.lineage
    assert len(lin["source_sha256"]) == 64 and len(lin["calibration_fingerprint"]) == 64
    assert {"torch", "onnxruntime", "litert-torch"} <= set(lin["tools"])
    assert lin["recipe"]["build"]["precisions"] == ["fp32", "int8-static"] and lin["seed"] == 0


def test_reports_are_written_next_to_the_bundle_and_inside_it(torch_build, verified):
    rep = json.loads(torch_build.report_json.read_text())
    assert rep["passed"] and len(rep["artifacts"]) == 4
    page = torch_build.report_html.read_text()
    assert "<svg" in page and "digits.int8.tflite" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert "<script" not in page
    assert verified.member("reports/report.html").decode() == page
    assert not [p for p in torch_build.out_dir.iterdir() if p.name.startswith(".staging")]


def test_int8_onnx_uses_the_cpu_guardrails_settings(verified):
    from converters import _cpu
    entry = verified.manifest.artifact("artifacts/digits.int8.onnx")
    settings = entry.unrecognized["int8_settings"]
    rec = _cpu.recommend_ort_int8()
    assert settings["source"] == "converters._cpu" and settings["isa"] == rec.isa
    assert settings["activation_type"] == rec.activation_type
    m = _onnx(verified, "digits.int8.onnx")
    inits = {i.name: i for i in m.graph.initializer}
    q_in = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    want = onnx.TensorProto.UINT8 if rec.activation_type == "uint8" else onnx.TensorProto.INT8
    assert inits[q_in.input[2]].data_type == want


def test_torch_tflite_fp16_and_dynamic_int8_via_ai_edge_quantizer(torch_cnn, digits, tmp_path):
    import warnings

    from ai_edge_litert.interpreter import Interpreter

    import converters
    rec = {"build": {"targets": ["tflite"], "precisions": ["fp16", "int8-dynamic"]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = converters.build(torch_cnn, rec, out=tmp_path, eval_data=(digits["x_eval"], digits["y_eval"]))
    by_prec = {a["precision"]: a for a in r.artifacts}
    assert all(a["parity"]["passed"] for a in r.artifacts)
    import zipfile
    z = zipfile.ZipFile(r.bundle)
    for prec, dtype in (("fp16", np.float16), ("int8-dynamic", np.int8)):
        it = Interpreter(model_content=z.read(f"artifacts/{by_prec[prec]['name']}"))
        assert dtype in {d["dtype"] for d in it.get_tensor_details()}, prec
        assert it.get_input_details()[0]["dtype"] == np.float32  # float I/O: no io_quant needed
    assert by_prec["int8-dynamic"]["size"] < by_prec["fp16"]["size"]  # 1-byte vs 2-byte weights
