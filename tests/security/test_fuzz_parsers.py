"""Bounded fuzzing of every parser that reads outside input (issue 8 item 2): manifest, recipe,
parameter update (and its delta decoder), ONNX/TFLite weight locator, device update, trust file.

Each target runs the ``fuzz-ci`` hypothesis profile (tests/support/fuzz.py: 150 inputs, a few
seconds). The long run is ``benchmarks/fuzz_long.py``; its figures are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.fuzz import FUZZ_PROFILE, TARGETS


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_parser_survives_fuzzing(name):
    target = TARGETS[name]
    outcomes = {"refused": 0, "accepted": 0}

    @settings(settings.get_profile(FUZZ_PROFILE))
    @given(st.data())
    def run(data):
        result = target.run(data.draw(target.strategy))
        outcomes["refused" if isinstance(result, BaseException) else "accepted"] += 1

    run()
    # the inputs reached the parser and most were refused: a target that accepts everything fuzzes nothing
    assert outcomes["refused"] + outcomes["accepted"] >= 100, outcomes


def test_every_parser_the_issue_names_has_a_target():
    assert set(TARGETS) >= {"manifest", "recipe", "param_update", "weights", "device_update", "trust"}
