"""The recipe (init writes a loadable, commented file; flags override it) and
the ``edgepack build`` command: exit codes, --json, and the summary."""

from __future__ import annotations

import json

import pytest

import converters
from converters._recipe import DEFAULT_TOLERANCES
from edgepack.cli import main


def test_init_writes_a_commented_recipe_that_loads_to_the_defaults(tmp_path, capsys):
    p = tmp_path / "edgepack.toml"
    assert main(["init", str(p)]) == 0
    text = p.read_text()
    assert text.count("#") > 20
    r = converters.load_recipe(p)
    assert r == converters.Recipe()
    assert r.tolerance("int8-static") == DEFAULT_TOLERANCES["int8-static"]
    assert main(["init", str(p)]) == 3  # refuses to overwrite without --force


def test_recipe_overrides_one_tolerance_field_and_keeps_the_rest(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('[parity.int8]\nmin_cosine = 0.5\n[build]\nprecisions = ["fp32", "int8"]\n')
    r = converters.load_recipe(p)
    t = r.tolerance("int8-static")
    assert t.min_cosine == 0.5 and t.min_top1_agreement == DEFAULT_TOLERANCES["int8-static"].min_top1_agreement


def test_wrongly_typed_recipe_value_is_a_config_error():
    with pytest.raises(converters.UnknownKeyError.__mro__[1]) as ei:
        converters.recipe_from_dict({"onnx": {"opset": "eighteen"}})
    assert "onnx.opset" in ei.value.message


def test_cli_build_flags_override_the_recipe_and_json_reports_the_bundle(tmp_path, capsys, saved_pt2, npz_files):
    rec = tmp_path / "r.toml"
    rec.write_text('[model]\nname = "fromrecipe"\n[build]\ntargets = ["onnx", "tflite"]\nprecisions = ["fp16"]\n')
    code = main(["build", str(saved_pt2), "-r", str(rec), "-o", str(tmp_path / "out"), "--targets", "onnx",
                 "--precision", "fp32,int8", "--calibration", str(npz_files["calib"]), "--eval",
                 str(npz_files["eval"]), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["passed"] and out["signed"] is False
    assert out["bundle"].endswith("fromrecipe-1.edgepack")
    assert sorted(a["name"] for a in out["artifacts"]) == ["fromrecipe.fp32.onnx", "fromrecipe.int8.onnx"]
    assert any("UNSIGNED" in w for w in out["warnings"])


def test_cli_build_failing_parity_exits_8_and_prints_the_summary(tmp_path, capsys, drift_data):
    import numpy as np
    import torch

    from .conftest import make_drift_model
    p = tmp_path / "drift.pt2"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(make_drift_model(), (torch.zeros(2, 16),), dynamic_shapes=({0: batch},)), p)
    np.save(tmp_path / "c.npy", drift_data[:100])
    np.save(tmp_path / "e.npy", drift_data[100:])
    code = main(["build", str(p), "-o", str(tmp_path / "o"), "--targets", "onnx", "--precision", "fp32,int8",
                 "--calibration", str(tmp_path / "c.npy"), "--eval", str(tmp_path / "e.npy")])
    err = capsys.readouterr().err
    assert code == 8
    assert "BUILD FAILED" in err and "model.int8.onnx" in err and "first diverging node" in err


def test_strict_fails_with_exit_11_when_a_quantized_artifact_is_slower(tmp_path, capsys, saved_pt2, npz_files):
    rec = tmp_path / "r.toml"
    # a negative margin makes any quantized artifact "slower": this tests the wiring, find_slower's maths below
    rec.write_text("[latency]\nslower_margin = -1.0\nmin_slower_ms = -1.0\nruns = 3\n")
    code = main(["build", str(saved_pt2), "-r", str(rec), "-o", str(tmp_path / "o"), "--targets", "onnx",
                 "--precision", "fp32,int8-dynamic", "--eval", str(npz_files["eval"]), "--strict"])
    assert code == 11
    assert "slower than fp32" in capsys.readouterr().err
    assert not list((tmp_path / "o").glob("*.edgepack"))


@pytest.mark.parametrize("q_ms,fp_ms,flagged", [(2.0, 1.0, True), (1.05, 1.0, False), (0.03, 0.01, False),
                                                 (0.5, 1.0, False)])
def test_find_slower_flags_only_real_slowdowns(q_ms, fp_ms, flagged):
    from converters._latency import LatencyConfig, find_slower
    rows = [{"name": "m.fp32.onnx", "format": "onnx", "precision": "fp32", "latency": {"p50_ms": fp_ms}},
            {"name": "m.int8.onnx", "format": "onnx", "precision": "int8-static", "latency": {"p50_ms": q_ms}}]
    slow = find_slower(rows, LatencyConfig())
    assert bool(slow) is flagged
    if flagged:
        assert slow[0]["ratio"] == pytest.approx(q_ms / fp_ms)


def test_every_registered_exporter_and_producer_is_tested():
    from converters import _artifacts, _export_onnx, _export_tflite, _load
    # kinds covered by this folder's builds (torch: test_build_torch, keras: test_build_keras,
    # onnx: test_bad_inputs + test_onnx_source, saved_model: test_data_sources)
    tested = {"torch", "keras", "onnx", "saved_model"}
    assert set(_export_onnx.EXPORTERS) == tested and set(_export_tflite.EXPORTERS) == tested
    assert set(_artifacts.PRODUCERS) == set(converters.TARGETS)
    assert set(_load.LOADERS) == {".pt2", ".keras", ".onnx", "saved_model"}


def test_importing_converters_loads_no_framework():
    import subprocess
    import sys
    code = "import sys, converters; print(sorted(m for m in ('torch', 'tensorflow', 'onnx', 'keras') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
