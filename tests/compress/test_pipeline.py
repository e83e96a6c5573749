from __future__ import annotations

import pytest

from converters._compress_errors import SparsityRangeError
from converters._compress_pipeline import (
    CompressData,
    attribution_table,
    parse_sections,
    run_compression,
)
from converters._compress_report import html_section, passes_text
from converters._prune import PruneConfig, sparsity_of
from edgepack import ConfigError


def test_passes_run_in_fixed_order_and_each_is_attributed(teacher, digits):
    xtr, ytr, xte, yte = digits
    sections = {"finetune": {"epochs": 1}, "prune": {"sparsity": 0.5, "steps": 2, "finetune_epochs": 1},
                "distill": {"epochs": 8, "width_multiplier": 0.5}}
    model, reports = run_compression(teacher, sections, CompressData(xtr, ytr, xte, yte))
    assert [r.name for r in reports] == ["distill", "prune", "finetune"]
    for prev, nxt in zip(reports, reports[1:], strict=False):
        assert nxt.before.accuracy == pytest.approx(prev.after.accuracy)
    rows = attribution_table(reports)
    assert rows[0]["size_after"] < rows[0]["size_before"] / 3
    assert rows[1]["xz_after"] < rows[1]["xz_before"]
    assert sparsity_of(model) == pytest.approx(0.5, abs=0.01)  # [finetune] keeps the pruned zeros at zero
    text = passes_text(reports)
    assert "distill" in text and "prune" in text
    assert "<table>" in html_section(reports)


def test_config_objects_are_accepted(teacher, digits):
    xtr, ytr, xte, yte = digits
    _, reports = run_compression(teacher, {"prune": PruneConfig(sparsity=0.3, steps=1, finetune_epochs=0)},
                                 CompressData(xtr, ytr, xte, yte))
    assert reports[0].details["final_sparsity"] == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize("sections, err, match", [
    ({"prune": {"sparsty": 0.5}}, ConfigError, "did you mean 'sparsity'"),
    ({"prnue": {}}, ConfigError, r"did you mean \[prune\]"),
    ({"prune": {"sparsity": 1.2}}, SparsityRangeError, "sparsity"),
    ({"prune": {"sparsity": "half"}}, ConfigError, "must be float"),
    ({"search": {"sparsities": 0.5}}, ConfigError, "must be a list"),
])
def test_bad_sections_are_rejected_with_the_key(sections, err, match):
    with pytest.raises(err, match=match):
        parse_sections(sections)


def test_disabled_section_is_skipped():
    assert parse_sections({"prune": {"enabled": False, "sparsity": 0.5}}) == {}
