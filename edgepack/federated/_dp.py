"""Central differential privacy: clip every update, then add Gaussian noise to the sum.

This is DP-FedAvg with fixed clipping (McMahan et al., "Learning Differentially
Private Recurrent Language Models", ICLR 2018): each device's delta is clipped
to L2 norm ``S`` and folded with weight 1 (sample-count weights would let one
device's influence exceed ``S``), Gaussian noise with standard deviation
``noise_multiplier * S`` is added to the sum, and the sum is divided by the
number of updates. The :class:`DPRecord` keeps the noise multiplier so a
privacy accountant can compute epsilon over the rounds; this module does not
compute epsilon itself.

Noise comes from numpy's PCG64 generator seeded from OS entropy. That is not a
cryptographically secure sampler and floating-point Gaussian samples leak
low-order bits (Mironov, CCS 2012); ``seed`` exists for tests only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._aggregate import RoundAccumulator
from ._errors import AggregationError, FederatedConfigError
from ._params import Params
from ._robust import clip_scale

__all__ = ["CentralDPConfig", "DPRecord", "dp_clip_scale", "finalize_with_dp"]

# A clipped update's norm may exceed S by float rounding in the scale itself.
_CLIP_SLACK = 1e-9


@dataclass(frozen=True)
class CentralDPConfig:
    """Clip bound ``clip_norm`` (S) and ``noise_multiplier`` (z); noise std on the sum is z * S."""

    clip_norm: float
    noise_multiplier: float
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.clip_norm > 0:
            raise FederatedConfigError(f"clip_norm must be > 0, got {self.clip_norm}", where="clip_norm")
        if not self.noise_multiplier >= 0:
            raise FederatedConfigError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}",
                                       where="noise_multiplier")


@dataclass(frozen=True)
class DPRecord:
    """What a privacy accountant needs about one round."""

    mechanism: str
    clip_norm: float
    noise_multiplier: float
    noise_stddev: float  # on the sum, before dividing by num_updates
    num_updates: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def dp_clip_scale(norm: float, config: CentralDPConfig) -> float:
    """The scale to fold an update with, so its contribution is at most ``clip_norm``."""
    return clip_scale(norm, config.clip_norm)


def finalize_with_dp(acc: RoundAccumulator, config: CentralDPConfig,
                     rng: np.random.Generator | None = None) -> tuple[Params, DPRecord]:
    """Add the Gaussian noise to ``acc``'s sum and return the noisy mean (consumes ``acc``).

    Raises:
        AggregationError: if ``acc`` is empty, or an update was folded with a weight
            other than 1 or without a recorded norm within ``clip_norm`` (the noise would
            then not cover its sensitivity).
    """
    if acc.count == 0:
        raise AggregationError("no updates were folded; there is nothing to release")
    for r in acc.iter_records():
        if r.weight != 1.0:
            raise AggregationError(f"update {r.update_id} has weight {r.weight}; central DP needs weight 1",
                                   hint="fold DP rounds with weight=1.0 and the scale from dp_clip_scale")
        if r.norm is None or r.norm * r.scale > config.clip_norm * (1 + _CLIP_SLACK):
            raise AggregationError(f"update {r.update_id} was not clipped to {config.clip_norm}",
                                   hint="pass norm= and scale=dp_clip_scale(norm, config) to fold")
    gen = rng if rng is not None else np.random.default_rng(config.seed)
    std = config.noise_multiplier * config.clip_norm

    def noise(out: np.ndarray) -> None:
        gen.standard_normal(out=out)
        out *= std

    if std > 0:
        acc.add_to_sum(noise)
    record = DPRecord("gaussian", config.clip_norm, config.noise_multiplier, std, acc.count)
    return acc.finalize(), record
