"""Server optimizers, robust aggregators and central DP, each against a direct numpy computation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgepack.federated import (
    AggregationError,
    CentralDPConfig,
    FedAdamConfig,
    FedAvgConfig,
    FedAvgMConfig,
    FederatedConfigError,
    FedYogiConfig,
    ParamSpec,
    RoundAccumulator,
    ServerOptimizer,
    SpillStore,
    clip_to_norm,
    dp_clip_scale,
    finalize_with_dp,
    flag_outlier,
    l2_norm,
)
from edgepack.federated._optim import OPTIMIZERS

SPEC = ParamSpec.from_params({"w": np.zeros((300, 230), np.float32), "b": np.zeros(5, np.float32)})


def flat(p: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([p[k].astype(np.float64).ravel() for k in SPEC.names])


def numpy_optimizer(config: object, x: np.ndarray, deltas: list[np.ndarray]) -> np.ndarray:
    """The update rules written out plainly, on whole float64 vectors."""
    m = np.zeros_like(x)
    tau = getattr(config, "tau", 0.0)
    v = np.full_like(x, tau**2)
    for d in deltas:
        if isinstance(config, FedAvgMConfig):
            m = config.momentum * m + d
            step = config.server_lr * m
        elif isinstance(config, (FedAdamConfig, FedYogiConfig)):
            m = config.beta1 * m + (1 - config.beta1) * d
            if type(config) is FedYogiConfig:
                v = v - (1 - config.beta2) * d * d * np.sign(v - d * d)
            else:
                v = config.beta2 * v + (1 - config.beta2) * d * d
            step = config.server_lr * m / (np.sqrt(v) + config.tau)
        else:
            step = config.server_lr * d
        x = (x + step).astype(np.float32).astype(np.float64)
    return x


CONFIGS = [FedAvgConfig(0.5), FedAvgMConfig(1.0, 0.9), FedAdamConfig(0.05), FedYogiConfig(0.05)]


def test_every_registered_optimizer_is_tested() -> None:
    assert {type(c) for c in CONFIGS} == set(OPTIMIZERS)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_server_optimizer_matches_numpy_rules(config: object, rng: np.random.Generator,
                                              make_params: Callable, tmp_path: Path) -> None:
    x = make_params(rng, SPEC)
    rounds = [[make_params(rng, SPEC, 0.1) for _ in range(3)] for _ in range(4)]
    deltas = [sum(flat(u) * w for u, w in zip(r, (1, 2, 3), strict=True)) / 6 for r in rounds]
    opt = ServerOptimizer(SPEC, config)  # type: ignore[arg-type]
    cur = x
    for i, r in enumerate(rounds):
        acc = RoundAccumulator(SPEC)
        for j, u in enumerate(r):
            acc.fold(str(j), u, j + 1)
        cur = opt.step(cur, acc)
        if i == 1:  # a server restart between rounds continues the same run
            opt.save(tmp_path / "opt")
            opt = ServerOptimizer.load(tmp_path / "opt", SPEC, config)  # type: ignore[arg-type]
    want = numpy_optimizer(config, flat(x), deltas)
    np.testing.assert_allclose(flat(cur), want, rtol=1e-6, atol=1e-7)
    assert cur["w"].dtype == np.float32 and opt.steps == 4  # the step count survived the restart


def test_optimizer_state_for_another_config_is_refused(tmp_path: Path) -> None:
    ServerOptimizer(SPEC, FedAdamConfig()).save(tmp_path / "o")
    from edgepack.federated import AccumulatorStateError
    with pytest.raises(AccumulatorStateError, match="another optimizer"):
        ServerOptimizer.load(tmp_path / "o", SPEC, FedYogiConfig())


@pytest.mark.parametrize("bad", [lambda: FedAvgMConfig(momentum=1.0), lambda: FedAdamConfig(tau=0),
                                 lambda: FedAvgConfig(server_lr=-1)])
def test_invalid_optimizer_config_is_refused(bad: Callable[[], object]) -> None:
    with pytest.raises(FederatedConfigError):
        bad()


@pytest.mark.parametrize("n", [1, 6, 7])
def test_spilled_median_and_trimmed_mean_match_numpy(n: int, rng: np.random.Generator, make_params: Callable,
                                                     tmp_path: Path) -> None:
    ups = [make_params(rng, SPEC) for _ in range(n)]
    with SpillStore(SPEC, n, tmp_path) as store:
        for u in ups:
            store.add(u)
        assert store.path.stat().st_size == 4 * n * SPEC.size  # the documented disk cost
        med = store.median()
        trims = {beta: store.trimmed_mean(beta) for beta in (0.0, 0.2, 0.34)}
    assert list(tmp_path.iterdir()) == []  # the spill file is deleted
    for k in SPEC.names:
        stack = np.stack([u[k].astype(np.float64) for u in ups])
        np.testing.assert_array_equal(med[k], np.median(stack, axis=0).astype(np.float32))
        for beta, got in trims.items():
            cut = int(np.floor(beta * n))
            want = np.sort(stack, axis=0)[cut: n - cut].mean(axis=0).astype(np.float32)
            np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-7)


def test_median_resists_a_poisoned_update(rng: np.random.Generator, make_params: Callable, tmp_path: Path) -> None:
    ups = [make_params(rng, SPEC, 0.01) for _ in range(5)] + [{k: np.full(v.shape, 1e6, np.float32)
                                                                for k, v in make_params(rng, SPEC).items()}]
    with SpillStore(SPEC, 6, tmp_path) as store:
        for u in ups:
            store.add(u)
        assert np.abs(store.median()["w"]).max() < 1.0


def test_spill_store_refuses_more_than_capacity(rng: np.random.Generator, make_params: Callable,
                                                tmp_path: Path) -> None:
    with SpillStore(SPEC, 1, tmp_path) as store:
        store.add(make_params(rng, SPEC))
        with pytest.raises(AggregationError, match="full"):
            store.add(make_params(rng, SPEC))


def test_clip_to_norm_matches_numpy(rng: np.random.Generator, make_params: Callable) -> None:
    p = make_params(rng, SPEC)
    norm = np.linalg.norm(flat(p))
    clipped, scale = clip_to_norm(p, 2.0)
    assert scale == pytest.approx(2.0 / norm)
    assert l2_norm(clipped) == pytest.approx(2.0, rel=1e-6)
    same, one = clip_to_norm(p, norm * 2)
    assert one == 1.0 and np.array_equal(same["w"], p["w"])


def test_outlier_flag_uses_mean_plus_z_std_of_past_distances() -> None:
    past = [1.0, 1.2, 0.9, 1.1, 1.0]
    threshold = np.mean(past) + 3 * np.std(past)
    assert flag_outlier(threshold * 1.01, past).flagged
    v = flag_outlier(threshold * 0.99, past)
    assert not v.flagged and v.threshold == pytest.approx(threshold)
    assert not flag_outlier(1e9, past[:4]).flagged  # still warming up


def test_central_dp_equals_clip_sum_noise_divide_in_numpy(rng: np.random.Generator, make_params: Callable) -> None:
    cfg = CentralDPConfig(clip_norm=5.0, noise_multiplier=1.3, seed=99)
    ups = [make_params(rng, SPEC, s) for s in (0.001, 0.1, 0.3)]  # the last two exceed the bound
    acc = RoundAccumulator(SPEC)
    for i, u in enumerate(ups):
        norm = l2_norm(u)
        acc.fold(str(i), u, 1.0, scale=dp_clip_scale(norm, cfg), norm=norm)
    got, record = finalize_with_dp(acc, cfg)
    clipped = [flat(u) * min(1.0, 5.0 / np.linalg.norm(flat(u))) for u in ups]
    noise = np.random.default_rng(99).normal(0.0, 1.3 * 5.0, size=SPEC.size)
    want = (sum(clipped) + noise) / 3
    np.testing.assert_allclose(flat(got), want.astype(np.float32), rtol=1e-6, atol=1e-6)
    assert record.noise_multiplier == 1.3 and record.noise_stddev == pytest.approx(6.5)
    assert record.num_updates == 3 and record.to_dict()["mechanism"] == "gaussian"


@pytest.mark.parametrize("case", ["weighted", "unclipped"])
def test_central_dp_refuses_updates_outside_its_sensitivity(case: str, rng: np.random.Generator,
                                                            make_params: Callable) -> None:
    cfg = CentralDPConfig(clip_norm=0.01, noise_multiplier=1.0, seed=1)
    acc = RoundAccumulator(SPEC)
    u = make_params(rng, SPEC)
    if case == "weighted":
        acc.fold("a", u, 50.0, scale=dp_clip_scale(l2_norm(u), cfg), norm=l2_norm(u))
    else:
        acc.fold("a", u, 1.0, norm=l2_norm(u))
    with pytest.raises(AggregationError):
        finalize_with_dp(acc, cfg)
