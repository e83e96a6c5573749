"""Compression inside ``converters.build``: [distill] + [prune] run before export, the report
attributes each pass, parity is against the compressed model, accuracy against the original,
and the signed bundle verifies."""

from __future__ import annotations

import json
import warnings

import pytest

import converters
from converters._compress_errors import EvalDataRequiredError
from converters._errors import UnknownKeyError
from converters._prune import sparsity_of
from edgepack import Trust, generate_key, verify_bundle

RECIPE = {"model": {"name": "digits-small"}, "output": {"names": ["logits"]},
          "build": {"targets": ["onnx"], "precisions": ["fp32", "int8-static"]},
          "latency": {"runs": 5, "warmup": 1},
          "distill": {"epochs": 8, "width_multiplier": 0.5, "patience": 3},
          "prune": {"sparsity": 0.5, "steps": 2, "finetune_epochs": 1},
          "compress": {"max_accuracy_drop": 0.05}}


@pytest.fixture(scope="module")
def signing():
    key = generate_key()
    return key, Trust.of([key.public], threshold=1)


@pytest.fixture(scope="module")
def built(_teacher, digits, signing, tmp_path_factory):
    xtr, ytr, xte, yte = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = converters.build(_teacher, RECIPE, out=tmp_path_factory.mktemp("cbuild"), calibration=xtr[:128],
                               train_data=(xtr, ytr), eval_data=(xte, yte), key=signing[0])
    return res


def test_report_attributes_each_pass_in_order(built):
    comp = built.report["compression"]
    assert [p["pass"] for p in comp["attribution"]] == ["distill", "prune"]
    distill, prune = comp["attribution"]
    assert distill["size_after"] < distill["size_before"] / 3  # width x0.5 -> ~4x fewer params
    assert prune["accuracy_before"] == pytest.approx(distill["accuracy_after"])
    assert prune["xz_after"] < prune["xz_before"]  # the zeros only show in the compressed size
    assert comp["compressed_state_dict_bytes"] < comp["original_state_dict_bytes"] / 3
    assert all(p["after"]["latency_ms"] > 0 for p in comp["passes"])


def test_each_artifact_is_checked_against_the_original_accuracy(built, digits):
    comp = built.report["compression"]
    _, _, _, yte = digits
    assert 0.5 < comp["original_accuracy"] <= 1.0
    assert {a["artifact"] for a in comp["artifacts"]} == {r["name"] for r in built.report["artifacts"]}
    for a in comp["artifacts"]:
        assert a["passed"] and a["accuracy_drop_vs_original"] <= 0.05
        assert a["accuracy_drop_vs_original"] == pytest.approx(comp["original_accuracy"] - a["accuracy"])


def test_bundle_verifies_and_ships_the_pruned_student(built, signing):
    import onnx

    v = verify_bundle(built.bundle, signing[1], keep_members=True)
    assert built.signed and len(v.manifest.artifacts) == 2
    fp32 = next(a for a in v.manifest.artifacts if a.path.endswith("fp32.onnx"))
    g = onnx.load_from_string(v.member(fp32.path))
    weights = [onnx.numpy_helper.to_array(i) for i in g.graph.initializer if len(i.dims) == 4]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert zeros > 0.3  # the prune pass's zeros survived export (no masks: plain weights)
    shipped = json.loads(v.member("reports/report.json"))  # the signed report carries the attribution too
    assert [p["pass"] for p in shipped["compression"]["attribution"]] == ["distill", "prune"]


def test_report_html_and_summary_show_the_compression(built):
    page = built.report_html.read_text(encoding="utf-8")
    assert "Compression passes" in page and "Artifacts vs the original model" in page
    assert "<td>distill</td>" in page and "<td>prune</td>" in page
    from converters._report import summary_text

    text = summary_text(built.report, str(built.bundle), str(built.report_html), built.signed)
    assert "distill" in text and "pts vs original" in text


def test_source_model_is_left_unpruned(built, _teacher):
    assert sparsity_of(_teacher) < 0.01


def test_compression_without_eval_data_is_a_typed_error(_teacher, digits, tmp_path):
    xtr, ytr, _, _ = digits
    with pytest.raises(EvalDataRequiredError, match="eval data"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converters.build(_teacher, RECIPE, out=tmp_path, calibration=xtr[:64], train_data=(xtr, ytr))


def test_misspelled_pass_key_names_the_right_one():
    with pytest.raises(UnknownKeyError, match="sparsity"):
        converters.build(None, {**RECIPE, "prune": {"sparsty": 0.5}})


def test_compression_sections_need_a_torch_source(digits, tmp_path):
    from onnx import TensorProto, helper

    from converters._errors import UnsupportedError

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 64])
    g = helper.make_graph([helper.make_node("Flatten", ["input"], ["logits"])], "g", [x], [y])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString())
    _, _, xte, yte = digits
    with pytest.raises(UnsupportedError, match="need a torch model"):
        converters.build(path, RECIPE, out=tmp_path / "o", calibration=xte[:64], eval_data=(xte, yte))


def test_accuracy_lost_to_compression_over_budget_fails_the_build(_teacher, digits, tmp_path):
    from converters._errors import ParityFailedError

    xtr, ytr, xte, yte = digits
    recipe = {**RECIPE, "build": {"targets": ["onnx"], "precisions": ["fp32"]}, "distill": {"enabled": False},
              "prune": {"sparsity": 0.97, "steps": 1, "finetune_epochs": 0, "skip_last": False},
              "compress": {"max_accuracy_drop": 0.0}}
    with pytest.raises(ParityFailedError) as ei, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converters.build(_teacher, recipe, out=tmp_path, calibration=xtr[:64], train_data=(xtr, ytr),
                         eval_data=(xte, yte))
    fails = ei.value.failures
    # the export itself is faithful (no numeric parity failure vs the compressed model); only the budget fails
    assert [f["metric"] for f in fails] == ["accuracy_drop_vs_original"]
    assert fails[0]["value"] > 0.0
    assert ei.value.report["compression"]["artifacts"][0]["passed"] is False


SEARCH = {"model": {"name": "digits-search"}, "output": {"names": ["logits"]},
          "build": {"targets": ["onnx"], "search": True}, "latency": {"runs": 5, "warmup": 1},
          "search": {"sparsities": [0.0, 0.6], "structured_ratios": [0.0], "precisions": ["fp32", "int8-dynamic"],
                     "finetune_epochs": 1, "latency_runs": 5, "max_accuracy_drop": 0.03},
          "compress": {"max_accuracy_drop": 0.05}}


@pytest.fixture(scope="module")
def searched(_teacher, digits, tmp_path_factory):
    xtr, ytr, xte, yte = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converters.build(_teacher, SEARCH, out=tmp_path_factory.mktemp("search"), calibration=xtr[:128],
                                train_data=(xtr, ytr), eval_data=(xte, yte))


def test_search_builds_its_pick_and_reports_the_front(searched):
    s = searched.report["compression"]["search"]
    assert len(s["candidates"]) == 4 and s["best"] is not None and s["front"]
    best = s["best"]
    # the pick is the smallest candidate within the search budget, and it is what the bundle ships
    ok = [c for c in s["candidates"] if not c["failed"] and not c["error"]]
    assert best["size"] == min(c["size"] for c in ok)
    assert [a["precision"] for a in searched.report["artifacts"]] == [best["precision"]]
    page = searched.report_html.read_text(encoding="utf-8")
    assert "Search (" in page and "<svg" in page and best["label"] in page


def test_search_flag_reaches_the_recipe():
    import argparse

    from edgepack.cli import _build as cli_build

    p = argparse.ArgumentParser()
    cli_build.register(p.add_subparsers())
    args = p.parse_args(["build", "m.pt2", "--search", "--train", "t.npz"])
    assert args.search is True and args.train_data == "t.npz"


def test_init_template_shows_every_pass_section_commented_out(tmp_path):
    import re

    from converters._recipe import COMPRESSION_SECTIONS, load_recipe, write_init

    path = write_init(tmp_path / "edgepack.toml")
    text = path.read_text(encoding="utf-8")
    for name in [*COMPRESSION_SECTIONS, "compress"]:
        assert f"# [{name}]" in text
    assert load_recipe(path).compression() == {}  # commented out: a plain build stays plain
    # uncommented, the shown keys are all valid recipe keys
    lines = [re.sub(r"^# (\[|[a-z_]+ = )", r"\1", ln) for ln in text.splitlines()]
    (tmp_path / "on.toml").write_text("\n".join(lines), encoding="utf-8")
    assert set(load_recipe(tmp_path / "on.toml").compression()) == set(COMPRESSION_SECTIONS)


def test_report_shows_each_runtimes_fp32_size_and_latency_before_and_after(built):
    (row,) = built.report["compression"]["runtimes"]
    assert row["target"] == "onnx" and row["bytes_after"] < row["bytes_before"] / 3  # width x0.5
    assert row["p50_ms_before"] > 0 and row["p50_ms_after"] > 0
    assert "Each runtime, fp32: original vs compressed" in built.report_html.read_text(encoding="utf-8")


@pytest.mark.slow
def test_structured_pruning_shrinks_the_tflite_and_onnx_artifacts_in_the_build(_teacher, digits, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from converters import _tflite_eval

    xtr, ytr, xte, yte = digits
    recipe = {**RECIPE, "build": {"targets": ["onnx", "tflite"], "precisions": ["fp32"]},
              "distill": {"enabled": False}, "prune": {"enabled": False},
              "prune_structured": {"ratio": 0.5, "finetune_epochs": 2}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = converters.build(_teacher, recipe, out=tmp_path, calibration=xtr[:64], train_data=(xtr, ytr),
                               eval_data=(xte, yte))
    rows = {r["target"]: r for r in res.report["compression"]["runtimes"]}
    assert set(rows) == {"onnx", "tflite"}
    for r in rows.values():
        assert r["bytes_after"] < 0.4 * r["bytes_before"], r
    tfl = next(a for a in res.report["artifacts"] if a["name"].endswith(".tflite"))
    assert tfl["parity"]["passed"] and abs(tfl["size"] - rows["tflite"]["bytes_after"]) < 0.05 * tfl["size"]
    import zipfile

    data = zipfile.ZipFile(res.bundle).read(f"artifacts/{tfl['name']}")
    dense = sum(p.numel() for n, p in _teacher.named_parameters() if n.split(".")[0] not in ("1", "4", "8"))  # no BN
    assert _tflite_eval.param_count(data) < 0.4 * dense
    assert Interpreter(model_content=data).get_input_details()[0]["dtype"].__name__ == "float32"


def test_runtime_figures_record_an_export_the_helper_cannot_do_instead_of_failing(digits):
    import types

    import torch

    from converters._compress_build import CompressionRun, runtime_figures
    from converters._compress_report import build_section_html
    from converters._recipe import recipe_from_dict

    class KthValue(torch.nn.Module):  # aten::kthvalue has no ONNX export (docs/build.md)
        def forward(self, x):
            return x.flatten(1).kthvalue(3, dim=1).values[:, None]

    m = KthValue()
    run = CompressionRun(types.SimpleNamespace(model=m), [], None, None, {}, source=m)  # type: ignore[arg-type]
    rows = runtime_figures(run, recipe_from_dict({"build": {"targets": ["onnx"]}}), digits[2][:4])
    assert len(rows) == 1 and rows[0]["target"] == "onnx" and "kthvalue" in rows[0]["error"]
    page = build_section_html({"attribution": [], "artifacts": [], "runtimes": rows})
    assert "not measured" in page and "kthvalue" in page
