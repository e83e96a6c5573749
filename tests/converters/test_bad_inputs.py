"""Item 10: each kind of bad input gets its own typed error saying what,
where and how to fix it, before anything half-built is written."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import converters
from edgepack import ConfigError, ConversionError, DataError, EdgepackError, UsageError

ONNX_ONLY = {"build": {"targets": ["onnx"], "precisions": ["fp32"]}}


def _build(model, recipe, out, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converters.build(model, recipe, out=out, **kw)


@pytest.mark.parametrize("name,content", [
    ("garbage.pt2", b"not a zip at all"),
    ("garbage.onnx", b"\x00\x01not protobuf"),
    ("garbage.keras", b"PK\x03\x04broken"),
    ("model.txt", b"hello"),
])
def test_unreadable_or_wrong_type_model_file_is_a_model_load_error(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(converters.ModelLoadError) as ei:
        _build(str(p), ONNX_ONLY, tmp_path / "out")
    assert ei.value.exit_code == ConversionError.exit_code and ei.value.where == str(p)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("model", [object(), 42, "no.such.module:factory", "/nonexistent/model.onnx"])
def test_wrong_model_objects_and_missing_models_are_model_load_errors(tmp_path, model):
    with pytest.raises(converters.ModelLoadError):
        _build(model, ONNX_ONLY, tmp_path)


def _op_model(fn):
    import torch

    class OpModel(torch.nn.Module):
        def forward(self, x):
            return fn(x)

    return OpModel()


@pytest.mark.parametrize("target,fn,op", [
    ("onnx", lambda x: __import__("torch").kthvalue(x, 2, dim=1)[0][:, None] * x, "aten.kthvalue"),
    ("tflite", lambda x: __import__("torch").linalg.det(x.reshape(-1, 4, 4))[:, None] * x, "aten._linalg_det"),
])
def test_an_op_the_target_cannot_express_names_the_op_and_target(tmp_path, target, fn, op):
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    rec = {"build": {"targets": [target], "precisions": ["fp32"]}}
    with pytest.raises(converters.UnsupportedOpError) as ei:
        _build(_op_model(fn), rec, tmp_path, eval_data=x)
    assert ei.value.op.startswith(op) and ei.value.target == target
    assert op in ei.value.message and target in ei.value.message


def test_onnx_source_to_tflite_is_refused_with_the_reason(tmp_path, torch_build):
    src = tmp_path / "m.onnx"
    import zipfile
    src.write_bytes(zipfile.ZipFile(torch_build.bundle).read("artifacts/digits.fp32.onnx"))
    with pytest.raises(converters.UnsupportedError, match="no maintained ONNX->TFLite converter"):
        _build(str(src), {"build": {"targets": ["tflite"], "precisions": ["fp32"]}}, tmp_path / "o",
               eval_data=np.zeros((4, 1, 8, 8), np.float32))


def test_static_int8_without_calibration_data_is_refused_up_front(tmp_path, torch_cnn):
    with pytest.raises(converters.CalibrationRequiredError) as ei:
        _build(torch_cnn, {"build": {"precisions": ["fp32", "int8"]}}, tmp_path / "o")
    assert "--calibration" in ei.value.one_line()
    assert not (tmp_path / "o").exists()  # refused before any work or any directory


@pytest.mark.parametrize("bad,what", [
    (np.zeros((16, 1, 7, 7), np.float32), "shape"),
    (np.zeros((16, 64), np.float32), "shape"),
    (np.zeros((16, 1, 8, 8), np.int64), "dtype"),
])
def test_calibration_data_that_does_not_fit_the_model_is_a_data_mismatch(tmp_path, torch_cnn, digits, bad, what):
    with pytest.raises(converters.DataMismatchError) as ei:
        _build(torch_cnn, {"input": {"shape": ["batch", 1, 8, 8]}}, tmp_path, calibration=bad,
               eval_data=digits["x_eval"])
    assert what in ei.value.message and ei.value.exit_code == DataError.exit_code


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["calibration", "eval_data"])
def test_nan_or_inf_in_data_is_refused(tmp_path, torch_cnn, digits, value, which):
    x = digits["x_cal"].copy()
    x[3, 0, 2, 5] = value
    kw = {"calibration": digits["x_cal"], "eval_data": digits["x_eval"], which: x}
    with pytest.raises(converters.NonFiniteDataError, match=r"first at index \(3, 0, 2, 5\)"):
        _build(torch_cnn, None, tmp_path, **kw)


def test_nan_in_an_npz_file_names_the_file(tmp_path, torch_cnn, digits):
    x = digits["x_cal"].copy()
    x[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "c.npz", x=x)
    with pytest.raises(converters.NonFiniteDataError) as ei:
        _build(torch_cnn, None, tmp_path / "o", calibration=tmp_path / "c.npz")
    assert ei.value.where == str(tmp_path / "c.npz")


def test_unknown_recipe_key_names_the_key_and_the_closest_valid_one(tmp_path):
    p = tmp_path / "edgepack.toml"
    p.write_text('[parity.int8]\nmin_cosin = 0.9\n')
    with pytest.raises(converters.UnknownKeyError) as ei:
        converters.load_recipe(p)
    assert "min_cosin" in ei.value.message and "min_cosine" in ei.value.hint
    assert ei.value.exit_code == ConfigError.exit_code


@pytest.mark.parametrize("doc,key,close", [
    ({"biuld": {}}, "biuld", "build"),
    ({"build": {"precison": ["fp32"]}}, "precison", "precisions"),
    ({"onnx": {"opsett": 17}}, "opsett", "opset"),
])
def test_unknown_keys_anywhere_suggest_the_closest(doc, key, close):
    with pytest.raises(converters.UnknownKeyError) as ei:
        converters.recipe_from_dict(doc)
    assert key in ei.value.message and f"'{close}'" in ei.value.hint


def _unwritable(tmp_path: Path) -> Path:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    return blocker / "out"  # a directory cannot be created under a regular file, even by root


@pytest.mark.parametrize("make_out", [_unwritable, lambda tmp: Path("/proc/edgepack-out")])
def test_output_directory_that_is_not_writable_is_refused(tmp_path, torch_cnn, digits, make_out):
    with pytest.raises(converters.OutputDirError) as ei:
        _build(torch_cnn, ONNX_ONLY, make_out(tmp_path), eval_data=digits["x_eval"])
    assert isinstance(ei.value, UsageError) and "not writable" in ei.value.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions; the cases above cover it")
def test_read_only_output_directory_is_refused(tmp_path, torch_cnn, digits):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(converters.OutputDirError):
        _build(torch_cnn, ONNX_ONLY, ro / "out", eval_data=digits["x_eval"])


def test_every_converter_error_is_an_edgepack_error_with_an_exit_code():
    for name in converters.__all__:
        obj = getattr(converters, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, Warning):
            assert issubclass(obj, EdgepackError) and obj.exit_code > 1, name


def test_exported_program_with_a_static_batch_is_refused_with_how_to_fix(tmp_path):
    import torch

    from .conftest import make_drift_model
    p = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(make_drift_model(), (torch.zeros(2, 16),)), p)
    with pytest.raises(converters.ModelLoadError, match="static batch") as ei:
        _build(str(p), ONNX_ONLY, tmp_path / "o")
    assert "dynamic_shapes" in ei.value.hint
