"""Streaming FedAvg: numerics against direct numpy, idempotent folds, memory, and crash-safe persistence."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgepack.federated import (
    AccumulatorStateError,
    AggregationError,
    ParamSpec,
    RoundAccumulator,
    fedavg,
    l2_norm,
)


def direct_fedavg(updates: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    total = sum(weights)
    return {k: (sum(u[k].astype(np.float64) * w for u, w in zip(updates, weights, strict=True)) / total).astype(updates[0][k].dtype)
            for k in updates[0]}


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_fedavg_equals_direct_numpy_weighted_mean(dtype: str, rng: np.random.Generator, make_params: Callable) -> None:
    spec = ParamSpec.from_params({"a": np.zeros((70_001,), dtype), "b": np.zeros((3, 5), dtype)})
    updates = [make_params(rng, spec) for _ in range(6)]
    weights = [1.0, 10.0, 3.0, 250.0, 7.0, 42.0]
    got = fedavg(zip(updates, weights, strict=True))
    want = direct_fedavg(updates, weights)
    for k in want:
        assert got[k].dtype == np.dtype(dtype) and got[k].shape == want[k].shape
        # Same float64 products summed in the same order: equal to the last bit.
        np.testing.assert_array_equal(got[k], want[k])


def test_mean_is_non_destructive_and_equals_finalize(spec: ParamSpec, rng: np.random.Generator, make_params: Callable) -> None:
    acc = RoundAccumulator(spec)
    ups = [make_params(rng, spec) for _ in range(4)]
    for i, u in enumerate(ups[:2]):
        acc.fold(f"u{i}", u, i + 1)
    mid = acc.mean()
    for k, v in direct_fedavg(ups[:2], [1, 2]).items():
        np.testing.assert_array_equal(mid[k], v)
    for i, u in enumerate(ups[2:], start=2):
        acc.fold(f"u{i}", u, i + 1)
    m = acc.mean()
    f = acc.finalize()
    for k, v in direct_fedavg(ups, [1, 2, 3, 4]).items():
        np.testing.assert_array_equal(m[k], v)
        np.testing.assert_array_equal(f[k], v)
    with pytest.raises(AggregationError, match="finalized"):
        acc.fold("late", ups[0], 1)


def test_finalize_handles_mixed_dtypes_in_place(rng: np.random.Generator, make_params: Callable) -> None:
    spec = ParamSpec.from_params({"h": np.zeros(70_000, "float16"), "d": np.zeros(1001, "float64"),
                                  "s": np.zeros((300, 300), "float32")})
    ups = [make_params(rng, spec) for _ in range(3)]
    got = fedavg(zip(ups, [2, 3, 5], strict=True))
    for k, v in direct_fedavg(ups, [2, 3, 5]).items():
        np.testing.assert_array_equal(got[k], v)


def test_refolding_the_same_update_id_changes_nothing(spec: ParamSpec, rng: np.random.Generator, make_params: Callable) -> None:
    acc = RoundAccumulator(spec)
    u = make_params(rng, spec)
    assert acc.fold("same", u, 5) is True
    before = acc.weighted_sum().copy()
    assert acc.fold("same", make_params(rng, spec), 9) is False
    np.testing.assert_array_equal(acc.weighted_sum(), before)
    assert acc.count == 1 and acc.weight_sum == 5 and acc.accepted_ids == ["same"]


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_fold_refuses_weights_that_are_not_positive_finite(spec: ParamSpec, rng: np.random.Generator, make_params: Callable,
                                                           weight: float) -> None:
    with pytest.raises(AggregationError, match="weight"):
        RoundAccumulator(spec).fold("x", make_params(rng, spec), weight)


def test_fold_refuses_params_of_another_shape(spec: ParamSpec, rng: np.random.Generator, make_params: Callable) -> None:
    p = make_params(rng, spec)
    p["dense.bias"] = np.zeros(4, np.float32)
    with pytest.raises(AggregationError, match=r"dense.bias: shape \(4,\)"):
        RoundAccumulator(spec).fold("x", p, 1)


def test_finalize_of_an_empty_round_is_an_error(spec: ParamSpec) -> None:
    with pytest.raises(AggregationError, match="no updates"):
        RoundAccumulator(spec).finalize()


def test_distance_to_mean_equals_numpy(spec: ParamSpec, rng: np.random.Generator, make_params: Callable) -> None:
    acc = RoundAccumulator(spec)
    ups = [make_params(rng, spec) for _ in range(3)]
    assert acc.distance_to_mean(ups[0]) is None
    for i, u in enumerate(ups):
        acc.fold(str(i), u, i + 2)
    probe = make_params(rng, spec)
    mean = {k: sum(u[k].astype(np.float64) * (i + 2) for i, u in enumerate(ups)) / 9 for k in probe}
    want = np.sqrt(sum(((probe[k].astype(np.float64) - mean[k]) ** 2).sum() for k in probe))
    assert acc.distance_to_mean(probe) == pytest.approx(want, rel=1e-12)
    assert l2_norm(probe) == pytest.approx(np.sqrt(sum((probe[k].astype(np.float64) ** 2).sum() for k in probe)),
                                           rel=1e-12)


def test_fold_needs_no_model_sized_temporary() -> None:
    p = 2_000_000
    spec = ParamSpec.from_params({"w": np.zeros(p, np.float32)})
    acc = RoundAccumulator(spec)
    x = np.ones(p, np.float32)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(3):
            acc.fold(str(i), {"w": x}, 2.0)
        peak = tracemalloc.get_traced_memory()[1] - base
        out = acc.finalize()
        peak_final = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # A bare `acc += w * x` would allocate 4 * p = 8 MB per fold; we stay under 1/8 of that.
    assert peak < p // 2, peak
    assert peak_final < p // 2, peak_final
    np.testing.assert_array_equal(out["w"], np.full(p, 1.0, np.float32))


def test_saved_state_resumes_to_the_same_result(tmp_path: Path, spec: ParamSpec, rng: np.random.Generator, make_params: Callable) -> None:
    ups = [make_params(rng, spec) for _ in range(5)]
    weights = [3, 1, 4, 1, 5]
    acc = RoundAccumulator(spec)
    for i in range(3):
        acc.fold(f"u{i}", ups[i], weights[i], distance=float(i))
    acc.save(tmp_path / "round.state")
    restored = RoundAccumulator.load(tmp_path / "round.state", spec)
    assert restored.accepted_ids == ["u0", "u1", "u2"] and restored.weight_sum == 8
    assert restored.fold("u1", ups[1], 1) is False  # a retried upload after the restart is not counted twice
    for i in range(3, 5):
        restored.fold(f"u{i}", ups[i], weights[i])
    got = restored.finalize()
    for k, v in direct_fedavg(ups, weights).items():
        np.testing.assert_array_equal(got[k], v)


def test_crash_during_save_keeps_the_previous_state(tmp_path: Path, spec: ParamSpec, rng: np.random.Generator, make_params: Callable,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "round.state"
    acc = RoundAccumulator(spec)
    acc.fold("a", make_params(rng, spec), 1)
    acc.save(path)
    acc.fold("b", make_params(rng, spec), 1)

    def crash(*a: object) -> None:
        raise OSError(5, "simulated power loss")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(AccumulatorStateError, match="simulated power loss"):
        acc.save(path)
    monkeypatch.undo()
    assert RoundAccumulator.load(path, spec).accepted_ids == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round.state", "round.state.records"]  # no temp file left


@pytest.mark.parametrize("damage", ["flip_data_byte", "truncate", "extend", "flip_header", "empty"])
def test_damaged_state_file_is_refused(tmp_path: Path, spec: ParamSpec, rng: np.random.Generator, make_params: Callable,
                                       damage: str) -> None:
    path = tmp_path / "round.state"
    acc = RoundAccumulator(spec)
    acc.fold("a", make_params(rng, spec), 1)
    acc.save(path)
    data = bytearray(path.read_bytes())
    if damage == "flip_data_byte":
        data[-100] ^= 1
    elif damage == "truncate":
        data = data[:-8]
    elif damage == "extend":
        data += b"\0" * 8
    elif damage == "flip_header":
        data[20] ^= 0x20
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(AccumulatorStateError):
        RoundAccumulator.load(path, spec)


def test_state_for_another_spec_is_refused(tmp_path: Path, spec: ParamSpec, rng: np.random.Generator, make_params: Callable) -> None:
    acc = RoundAccumulator(spec)
    acc.fold("a", make_params(rng, spec), 1)
    acc.save(tmp_path / "s")
    other = ParamSpec.from_params({"w": np.zeros(3, np.float32)})
    with pytest.raises(AccumulatorStateError, match="another parameter spec"):
        RoundAccumulator.load(tmp_path / "s", other)


def test_strided_and_transposed_tensors_fold_like_contiguous_ones(rng: np.random.Generator) -> None:
    big = rng.normal(size=(40, 30)).astype(np.float32)
    views = {"strided": big[:, ::3].T, "every_other": big.reshape(-1)[::2]}
    spec = ParamSpec.from_params(views)
    contiguous = {k: np.ascontiguousarray(v) for k, v in views.items()}
    acc = RoundAccumulator(spec)
    acc.fold("a", views, 2.0)
    assert acc.distance_to_mean(views) == 0.0
    assert l2_norm(views) == pytest.approx(l2_norm(contiguous), rel=1e-15)
    for k, v in acc.finalize().items():
        np.testing.assert_array_equal(v, contiguous[k])
