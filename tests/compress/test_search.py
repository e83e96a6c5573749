from __future__ import annotations

import json

import pytest

from converters import _search
from converters._compress_errors import EvalDataRequiredError
from converters._search import SearchConfig, pareto_front, run

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


def test_impossible_budget_keeps_best_and_names_the_failed_constraint(_teacher, digits):
    xtr, ytr, xte, yte = digits
    _, res = run(_teacher, SearchConfig(**{**SMALL, "sparsities": (0.0,)}, max_size_mb=0.001), eval_x=xte,
                 eval_y=yte, calib_x=xtr)
    assert res.status == "budget_not_met" and not res.met_budget
    assert res.best is not None and res.best_model is not None
    assert any(f.startswith("max_size_mb") for f in res.best.failed)


def test_interrupt_keeps_the_best_so_far_and_checkpoints(_teacher, digits, tmp_path):
    xtr, ytr, xte, yte = digits
    cfg = SearchConfig(**{**SMALL, "sparsities": (0.0,), "precisions": ("fp32", "int8-dynamic", "int8-static")})
    real = _search._ort_measure(xte, yte, xtr, cfg)
    calls = []

    def measure(model, precision, method):
        calls.append(precision)
        if len(calls) == 3:  # baseline + one candidate measured, then Ctrl-C
            raise KeyboardInterrupt
        return real(model, precision, method)

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
    real = _search._ort_measure(xte, yte, xtr, cfg)

    def measure(model, precision, method):
        if precision == "int8-static":
            raise RuntimeError("quantizer exploded")
        return real(model, precision, method)

    _, res = run(_teacher, cfg, eval_x=xte, eval_y=yte, measure=measure)
    bad = [c for c in res.candidates if c.error]
    assert len(bad) == 1 and "quantizer exploded" in bad[0].error
    assert res.best.precision == "fp32"


@pytest.mark.parametrize("field, value", [("sparsities", (1.0,)), ("structured_ratios", (-0.5,)),
                                          ("precisions", ("int4",)), ("objective", "speed")])
def test_bad_search_settings_are_config_errors(field, value):
    from edgepack import ConfigError

    with pytest.raises(ConfigError):
        SearchConfig(**{field: value})


def test_report_section_plots_every_candidate_and_rings_the_pick(searched):
    from converters._compress_report import html_section, pareto_svg, search_text

    _, res = searched
    svg = pareto_svg(res)
    assert svg.count("r='4'") == len(res.candidates)
    assert svg.count("stroke='#c0392b'") == 1
    assert res.best.label in search_text(res)
    assert "<svg" in html_section([], res)
