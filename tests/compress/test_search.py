from __future__ import annotations

import json

import pytest

from converters._compress_errors import EvalDataRequiredError
from converters._search import MEASURES, SearchConfig, Variant, pareto_front, run, variants
from converters._search_measure import measure_on_target

SMALL = dict(sparsities=(0.0, 0.6), structured_ratios=(0.0,), precisions=("fp32", "int8-static"), finetune_epochs=1,
             latency_runs=10)


@pytest.fixture(scope="module")
def searched(_teacher, digits):
    xtr, ytr, xte, yte = digits
    return run(_teacher, SearchConfig(**SMALL, max_accuracy_drop=0.02), eval_x=xte, eval_y=yte, train_x=xtr,
               train_y=ytr)


@pytest.mark.parametrize("ex, ey", [(None, None), ("x", None)])
def test_search_without_labelled_eval_data_is_refused(_teacher, digits, ex, ey):
    x = digits[2] if ex else None
    with pytest.raises(EvalDataRequiredError, match="no labelled eval data") as e:
        run(_teacher, SearchConfig(**SMALL), eval_x=x, eval_y=ey)
    assert e.value.exit_code == 9


def test_pick_is_the_smallest_candidate_meeting_the_budget(searched):
    model, res = searched
    assert res.status == "met" and res.met_budget
    assert len(res.candidates) == 4 and all(c.error is None for c in res.candidates)
    feasible = [c for c in res.candidates if not c.failed]
    assert res.best in feasible
    assert res.best.size == min(c.size for c in feasible)
    assert res.best.precision == "int8-static"
    assert res.best_artifact and len(res.best_artifact) == res.best.size
    assert model is not None


def test_front_is_non_dominated_and_covers_the_pick(searched):
    _, res = searched
    cfg = SearchConfig(**SMALL)
    key = lambda c: (c.accuracy_drop, c.size, c.latency_ms)  # noqa: E731
    for f in res.front:
        assert not any(all(a <= b for a, b in zip(key(o), key(f), strict=False)) and key(o) != key(f) for o in res.candidates)
    assert res.best in pareto_front(res.candidates, cfg)


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_impossible_budget_keeps_best_and_names_the_failed_constraint(_teacher, digits, target):
    xtr, ytr, xte, yte = digits
    _, res = run(_teacher, SearchConfig(**{**SMALL, "sparsities": (0.0,)}, targets=(target,), max_size_mb=0.001),
                 eval_x=xte, eval_y=yte, calib_x=xtr)
    assert res.status == "budget_not_met" and not res.met_budget
    assert res.best is not None and res.best_model is not None and res.best.target == target
    assert all(c.failed for c in res.candidates)
    # the kept candidate is the most accurate of those failing the fewest constraints, and says what it misses
    assert res.best.failed == [f"max_size_mb: {res.best.size / 1e6:.4f} > 0.001"]
    from converters._compress_build import CompressionRun, search_warning

    run_ = CompressionRun(None, [], None, None, {}, search=res)  # type: ignore[arg-type]
    assert "max_size_mb" in search_warning(run_) and res.best.label in search_warning(run_)


def test_interrupt_keeps_the_best_so_far_and_checkpoints(_teacher, digits, tmp_path):
    xtr, ytr, xte, yte = digits
    cfg = SearchConfig(**{**SMALL, "sparsities": (0.0,), "precisions": ("fp32", "int8-dynamic", "int8-static")})
    real = measure_on_target(xte, yte, xtr, cfg)
    calls = []

    def measure(model, v):
        calls.append(v.precision)
        if len(calls) == 3:  # baseline + one candidate measured, then Ctrl-C
            raise KeyboardInterrupt
        return real(model, v)

    ck = tmp_path / "search.json"
    _, res = run(_teacher, cfg, eval_x=xte, eval_y=yte, measure=measure, checkpoint=str(ck))
    assert res.status == "interrupted"
    assert [c.precision for c in res.candidates] == ["fp32"]
    assert res.best is res.candidates[0]
    saved = json.loads(ck.read_text())
    assert saved["status"] == "interrupted" and saved["best"]["label"] == res.best.label


def test_a_failing_candidate_is_recorded_not_fatal(_teacher, digits):
    xtr, ytr, xte, yte = digits
    cfg = SearchConfig(**{**SMALL, "sparsities": (0.0,)})
    real = measure_on_target(xte, yte, xtr, cfg)

    def measure(model, v):
        if v.precision == "int8-static":
            raise RuntimeError("quantizer exploded")
        return real(model, v)

    _, res = run(_teacher, cfg, eval_x=xte, eval_y=yte, measure=measure)
    bad = [c for c in res.candidates if c.error]
    assert len(bad) == 1 and "quantizer exploded" in bad[0].error
    assert res.best.precision == "fp32"


@pytest.mark.parametrize("field, value", [("sparsities", (1.0,)), ("structured_ratios", (-0.5,)),
                                          ("precisions", ("int4",)), ("objective", "speed"), ("targets", ("coreml",)),
                                          ("calibration_methods", ("kl",)), ("tflite_calibration_methods", ("kl",)),
                                          ("per_channel", ()), ("tflite_int8_io", ("yes",))])
def test_bad_search_settings_are_config_errors(field, value):
    from edgepack import ConfigError

    with pytest.raises(ConfigError):
        SearchConfig(**{field: value})


def test_report_section_plots_every_candidate_and_rings_the_pick(searched):
    from converters._compress_report import html_section, pareto_svg, search_text

    _, res = searched
    svg = pareto_svg(res)
    assert svg.count("data-target='onnx'") == len(res.candidates)
    assert svg.count("stroke='#c0392b'") == 1
    assert res.best.label in search_text(res)
    assert "<svg" in html_section([], res)


def test_variants_expand_each_targets_own_quantization_settings():
    cfg = SearchConfig(targets=("onnx", "tflite"), precisions=("fp32", "int8-dynamic", "int8-static"),
                       calibration_methods=("minmax", "entropy"), per_channel=(True, False),
                       tflite_calibration_methods=("minmax", "moving_average"), tflite_int8_io=(True, False))
    vs = variants(cfg)
    onnx = [v for v in vs if v.target == "onnx"]
    tfl = [v for v in vs if v.target == "tflite"]
    # onnx: fp32 + dynamic x 2 per-channel + static x 2 methods x 2 per-channel; tflite: fp32 + dynamic + static x 2 x 2
    assert (len(onnx), len(tfl)) == (1 + 2 + 4, 1 + 1 + 4)
    assert Variant("onnx", "int8-static", "entropy", False) in onnx
    assert Variant("tflite", "int8-static", "moving_average", None, False) in tfl
    assert all(v.int8_io is None for v in onnx) and all(v.per_channel is None for v in tfl)
    assert len({v.label for v in vs}) == len(vs)
    assert {v.target for v in variants(SearchConfig())} == {"onnx"}  # standalone default
    assert {v.target for v in variants(SearchConfig(), ("tflite",))} == {"tflite"}  # the build passes its targets


@pytest.mark.parametrize("target", sorted(MEASURES))
def test_each_target_is_scored_on_its_own_runtime(_teacher, digits, target):
    """Every registered target: the candidate's artifact is that runtime's format, and re-running it there
    reproduces the accuracy the search recorded."""
    from converters._runners import open_session, run_batched

    xtr, ytr, xte, yte = digits
    _, res = run(_teacher, SearchConfig(**{**SMALL, "sparsities": (0.0,)}, targets=(target,)), eval_x=xte,
                 eval_y=yte, calib_x=xtr)
    assert [c.target for c in res.candidates] == [target] * 2 and all(c.error is None for c in res.candidates)
    art = res.best_artifact
    assert (art[4:8] == b"TFL3") == (target == "tflite")
    pred = run_batched(open_session(target, art), [xte])[0].argmax(-1)
    assert float((pred == yte).mean()) == pytest.approx(res.best.accuracy)
    assert res.best.accuracy_drop <= 0.02


@pytest.mark.slow
def test_cheapest_passing_tflite_candidate_is_picked_over_onnx(_teacher, digits):
    """A model ORT cannot quantize (its quantizer fails) but LiteRT can: the search measures both runtimes,
    and the pick is the smallest candidate within budget, an int8 TFLite one."""
    xtr, ytr, xte, yte = digits
    cfg = SearchConfig(**{**SMALL, "sparsities": (0.0,)}, targets=("onnx", "tflite"), max_accuracy_drop=0.02,
                       tflite_int8_io=(True, False))
    real = measure_on_target(xte, yte, xtr, cfg)

    def measure(model, v):
        if v.target == "onnx" and v.precision != "fp32":
            raise RuntimeError("onnxruntime could not quantize this graph")
        return real(model, v)

    _, res = run(_teacher, cfg, eval_x=xte, eval_y=yte, measure=measure)
    ok = [c for c in res.candidates if c.error is None]
    assert {c.target for c in ok} == {"onnx", "tflite"} and len(ok) == 4
    assert res.status == "met" and res.best.target == "tflite" and res.best.precision == "int8-static"
    assert res.best.size == min(c.size for c in ok if not c.failed)
    assert res.best.size < 0.5 * next(c.size for c in ok if c.target == "onnx")
    assert res.best_artifact[4:8] == b"TFL3" and len(res.best_artifact) == res.best.size


@pytest.mark.parametrize("cand, expect", [
    (dict(target="tflite", precision="int8-static", calibration_method="moving_average", int8_io=False),
     {"tflite": {"int8_io": False, "calibration_method": "moving_average"}}),
    (dict(target="onnx", precision="int8-static", calibration_method="entropy", per_channel=False),
     {"onnx": {"per_channel": False, "calibration_method": "entropy"}}),
])
def test_the_build_is_narrowed_to_the_picks_target_precision_and_settings(cand, expect):
    from converters._compress_build import _pick_overrides
    from converters._recipe import recipe_from_dict
    from converters._search import Candidate

    c = Candidate(0.0, 0.0, cand.pop("precision"), cand.pop("calibration_method"), **cand)
    rec = recipe_from_dict({"build": {"targets": ["onnx", "tflite"], "precisions": ["fp32", "fp16"]}})
    rec = rec.with_overrides(**_pick_overrides(c))
    assert rec.build.targets == (c.target,) and rec.build.precisions == (c.precision,)
    for section, fields in expect.items():
        assert {k: getattr(getattr(rec, section), k) for k in fields} == fields
