"""Poisoning (issue 8, item 3): 20-30 % of devices send malicious updates through the real validation path.

The simulation lives in ``benchmarks/bench_poisoning.py`` (the longer run and its table are in
benchmarks/RESULTS.md); here a shorter run checks the properties the table rests on.
"""

from __future__ import annotations

from functools import cache

import pytest
from bench_poisoning import DEFENCES, SimConfig, SimResult, simulate

ROUNDS = 10


@cache
def run(defence: str, fraction: float, stealth: bool = False) -> SimResult:
    return simulate(defence, SimConfig(malicious_fraction=fraction, rounds=ROUNDS, stealth=stealth))


@pytest.mark.parametrize("fraction", [0.2, 0.3])
@pytest.mark.parametrize("defence", DEFENCES)
def test_every_invalid_update_is_rejected_with_its_reason_under_every_defence(defence: str, fraction: float) -> None:
    r = run(defence, fraction)
    assert r.invalid_sent > 0
    assert r.invalid_rejected == r.invalid_sent
    assert r.invalid_folded == 0
    assert {"non_finite", "replay", "wrong_round"} <= set(r.reasons)


def test_norm_bound_recovers_the_accuracy_that_boosted_updates_destroy_under_plain_fedavg() -> None:
    clean = run("fedavg", 0.0).accuracy[-1]
    plain, bounded = run("fedavg", 0.3), run("norm_bound", 0.3)
    assert plain.accuracy[-1] < clean - 0.25
    assert bounded.accuracy[-1] > plain.accuracy[-1] + 0.2
    assert bounded.reasons["norm_exceeded"] > 0
    assert bounded.benign_rejected == 0


def test_outlier_rejection_limits_attackers_who_stay_just_under_the_norm_bound() -> None:
    bounded, outlier = run("norm_bound", 0.3, stealth=True), run("outlier", 0.3, stealth=True)
    assert bounded.reasons["norm_exceeded"] == 0  # the stealthy updates pass the bound...
    assert outlier.reasons["outlier"] > 0  # ...but stand out from the running mean
    assert outlier.accuracy[-1] > bounded.accuracy[-1] + 0.08
    assert outlier.benign_rejected == 0


def test_robust_options_cost_nothing_without_attackers() -> None:
    clean = run("fedavg", 0.0).accuracy
    assert run("norm_bound", 0.0).accuracy == clean
    assert run("outlier", 0.0).accuracy == clean
