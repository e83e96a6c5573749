"""Server optimizers: FedAvg, FedAvgM, FedAdam and FedYogi.

They treat the round's weighted mean *delta* (device weights minus the global
weights it started from) as a pseudo-gradient, as in Reddi et al., "Adaptive
Federated Optimization" (ICLR 2021, Algorithm 2) and Hsu et al. 2019 (FedAvgM):

- FedAvg:  ``x += lr * d``
- FedAvgM: ``m = momentum * m + d``; ``x += lr * m``
- FedAdam: ``m = b1 m + (1-b1) d``; ``v = b2 v + (1-b2) d^2``; ``x += lr * m / (sqrt(v) + tau)``
- FedYogi: as FedAdam but ``v -= (1-b2) d^2 sign(v - d^2)``

``v`` starts at ``tau**2`` (the paper's ``v_{-1} >= tau^2``) and there is no
bias correction, as in the paper. Moments are flat float64 arrays updated chunk
by chunk, so a step needs no model-sized temporaries; they persist atomically
with :meth:`ServerOptimizer.save` so a restarted server continues the same run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ._aggregate import RoundAccumulator
from ._errors import AccumulatorStateError, AggregationError, FederatedConfigError
from ._kernels import CHUNK
from ._params import Params, ParamSpec
from ._state import load_state, save_state

__all__ = ["FedAdamConfig", "FedAvgConfig", "FedAvgMConfig", "FedYogiConfig", "ServerOptimizer"]


def _positive(name: str, value: float, *, upper: float | None = None) -> None:
    if not (value > 0 and (upper is None or value < upper)):
        bound = f" and < {upper}" if upper is not None else ""
        raise FederatedConfigError(f"{name} must be > 0{bound}, got {value}", where=name)


@dataclass(frozen=True)
class FedAvgConfig:
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        _positive("server_lr", self.server_lr)


@dataclass(frozen=True)
class FedAvgMConfig:
    server_lr: float = 1.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        _positive("server_lr", self.server_lr)
        _positive("momentum", self.momentum, upper=1.0)


@dataclass(frozen=True)
class FedAdamConfig:
    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        _positive("server_lr", self.server_lr)
        _positive("beta1", self.beta1, upper=1.0)
        _positive("beta2", self.beta2, upper=1.0)
        _positive("tau", self.tau)


@dataclass(frozen=True)
class FedYogiConfig(FedAdamConfig):
    pass


OptimizerConfig = FedAvgConfig | FedAvgMConfig | FedAdamConfig | FedYogiConfig
_Rule = Callable[[Any, dict[str, np.ndarray], np.ndarray], np.ndarray]


def _fedavg(cfg: FedAvgConfig, st: dict[str, np.ndarray], d: np.ndarray) -> np.ndarray:
    return cfg.server_lr * d


def _fedavgm(cfg: FedAvgMConfig, st: dict[str, np.ndarray], d: np.ndarray) -> np.ndarray:
    m = st["m"]
    m *= cfg.momentum
    m += d
    return cfg.server_lr * m


def _adam_m(cfg: FedAdamConfig, st: dict[str, np.ndarray], d: np.ndarray) -> None:
    m = st["m"]
    m *= cfg.beta1
    m += (1.0 - cfg.beta1) * d


def _fedadam(cfg: FedAdamConfig, st: dict[str, np.ndarray], d: np.ndarray) -> np.ndarray:
    _adam_m(cfg, st, d)
    v = st["v"]
    v *= cfg.beta2
    v += (1.0 - cfg.beta2) * (d * d)
    return cfg.server_lr * st["m"] / (np.sqrt(v) + cfg.tau)


def _fedyogi(cfg: FedYogiConfig, st: dict[str, np.ndarray], d: np.ndarray) -> np.ndarray:
    _adam_m(cfg, st, d)
    v = st["v"]
    d2 = d * d
    v -= (1.0 - cfg.beta2) * d2 * np.sign(v - d2)
    return cfg.server_lr * st["m"] / (np.sqrt(v) + cfg.tau)


# Registry (STYLE rule 7): config type -> (name, moment arrays, step rule).
# FedYogiConfig subclasses FedAdamConfig, so lookups use the exact type.
OPTIMIZERS: dict[type, tuple[str, tuple[str, ...], _Rule]] = {
    FedAvgConfig: ("fedavg", (), _fedavg),
    FedAvgMConfig: ("fedavgm", ("m",), _fedavgm),
    FedAdamConfig: ("fedadam", ("m", "v"), _fedadam),
    FedYogiConfig: ("fedyogi", ("m", "v"), _fedyogi),
}


class ServerOptimizer:
    """Applies a round's mean delta to the global weights with one of the rules above.

    Raises:
        FederatedConfigError: if ``config`` is not a registered optimizer config.
    """

    def __init__(self, spec: ParamSpec, config: OptimizerConfig | None = None) -> None:
        config = config if config is not None else FedAvgConfig()
        if type(config) not in OPTIMIZERS:
            raise FederatedConfigError(f"unknown server optimizer config {type(config).__name__}",
                                       hint=f"use one of {[c.__name__ for c in OPTIMIZERS]}")
        self.spec, self.config = spec, config
        self.name, moments, self._rule = OPTIMIZERS[type(config)]
        init = {"m": 0.0, "v": getattr(config, "tau", 0.0) ** 2}
        self.state = {k: np.full(spec.size, init[k], dtype=np.float64) for k in moments}
        self.steps = 0

    def step(self, global_params: Mapping[str, np.ndarray], mean_delta: RoundAccumulator | Mapping[str, np.ndarray]
             ) -> Params:
        """New global weights (in the spec's dtypes) from the old ones and the round's mean delta.

        ``mean_delta`` may be the round's accumulator itself, which avoids
        materialising the mean.

        Raises:
            AggregationError: if either input does not fit the spec, or the accumulator is empty.
        """
        self.spec.check(global_params, where="global params")
        delta_chunk = self._delta_reader(mean_delta)
        out: Params = {}
        for t, a, _ in self.spec.slices():
            x = np.asarray(global_params[t.name]).reshape(-1)
            new = np.empty(t.size, dtype=t.dtype)
            for s in range(0, t.size, CHUNK):
                e = min(s + CHUNK, t.size)
                st = {k: v[a + s: a + e] for k, v in self.state.items()}
                upd = self._rule(self.config, st, delta_chunk(a + s, a + e))
                new[s:e] = x[s:e].astype(np.float64) + upd
            out[t.name] = new.reshape(t.shape)
        self.steps += 1
        return out

    def _delta_reader(self, mean_delta: RoundAccumulator | Mapping[str, np.ndarray]
                      ) -> Callable[[int, int], np.ndarray]:
        if isinstance(mean_delta, RoundAccumulator):
            if mean_delta.spec != self.spec:
                raise AggregationError("the accumulator is for another parameter spec")
            if mean_delta.weight_sum <= 0:
                raise AggregationError("the round has no updates; there is no step to take")
            total, wsum = mean_delta.weighted_sum(), mean_delta.weight_sum
            return lambda a, b: total[a:b] / wsum
        self.spec.check(mean_delta, where="mean delta")
        flat = np.concatenate([np.asarray(mean_delta[n], dtype=np.float64).reshape(-1) for n in self.spec.names])
        return lambda a, b: flat[a:b]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Persist the moments and step count atomically.

        Raises:
            AccumulatorStateError: if it cannot be written.
        """
        meta = {"optimizer": self.name, "config": asdict(self.config), "steps": self.steps,
                "spec": self.spec.to_dict()}
        save_state(path, "server-optimizer", meta, self.state)

    @classmethod
    def load(cls, path: str | os.PathLike[str], spec: ParamSpec, config: OptimizerConfig) -> ServerOptimizer:
        """Restore moments saved by :meth:`save`; ``spec`` and ``config`` must match the saved run.

        Raises:
            AccumulatorStateError: if the file is corrupt or from another spec, optimizer or config.
        """
        meta, arrays = load_state(path, "server-optimizer")
        self = cls(spec, config)
        if meta.get("optimizer") != self.name or meta.get("config") != asdict(config):
            raise AccumulatorStateError("saved optimizer state is for another optimizer or config", where=str(path))
        if meta.get("spec") != spec.to_dict():
            raise AccumulatorStateError("saved optimizer state is for another parameter spec", where=str(path))
        for k in self.state:
            a = arrays.get(k)
            if a is None or a.dtype != np.float64 or a.size != spec.size:
                raise AccumulatorStateError(f"optimizer moment {k!r} is missing or the wrong size", where=str(path))
            self.state[k] = a
        self.steps = int(meta.get("steps", 0))
        return self
