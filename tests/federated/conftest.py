"""Fixtures for the federated tests: a small multi-tensor spec, device keys, and update builders."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from edgepack import PublicKey, SigningKey, generate_key
from edgepack.federated import (
    CompressionConfig,
    ParamSpec,
    RoundContext,
    compress,
    encode_update,
)

ROUND_ID = "round-7"
BASE_VERSION = 3


def _make_params(rng: np.random.Generator, spec: ParamSpec, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {t.name: (rng.normal(size=t.shape) * scale).astype(t.dtype) for t in spec.tensors}


@pytest.fixture(scope="session")
def make_params() -> Callable[..., dict[str, np.ndarray]]:
    """``make_params(rng, spec, scale=1.0)``: random tensors that fit ``spec``."""
    return _make_params


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def spec() -> ParamSpec:
    # 65_535 elements span several fold chunks (32K) and end mid-chunk; the tiny bias checks small tensors.
    return ParamSpec.from_params({
        "dense.weight": np.zeros((257, 255), np.float32),
        "dense.bias": np.zeros((3,), np.float32),
        "head.weight": np.zeros((10, 4), np.float32),
    })


@pytest.fixture(scope="session")
def device_keys() -> dict[str, SigningKey]:
    return {f"dev-{i}": generate_key() for i in range(4)}


@pytest.fixture(scope="session")
def registry(device_keys: dict[str, SigningKey]) -> dict[str, PublicKey]:
    return {d: k.public for d, k in device_keys.items()}


@pytest.fixture
def ctx(spec: ParamSpec) -> RoundContext:
    return RoundContext(ROUND_ID, BASE_VERSION, spec, codecs=("none", "int8", "topk"))


UpdateFactory = Callable[..., bytes]


@pytest.fixture
def make_update(device_keys: dict[str, SigningKey], spec: ParamSpec, rng: np.random.Generator) -> UpdateFactory:
    """Build a signed update; any header field or the params can be overridden."""

    def build(device: str = "dev-0", *, params: dict[str, np.ndarray] | None = None, key: SigningKey | None = None,
              round_id: str = ROUND_ID, base_version: int = BASE_VERSION, num_samples: int = 50,
              codec: str = "none", update_id: str | None = None) -> bytes:
        p = params if params is not None else _make_params(rng, spec, 0.01)
        return encode_update(key or device_keys[device], round_id=round_id, base_version=base_version,
                             device_id=device, num_samples=num_samples,
                             tensors=compress(p, CompressionConfig(codec, 0.1), rng=rng), update_id=update_id)

    return build
