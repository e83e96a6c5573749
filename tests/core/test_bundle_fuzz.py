"""Random byte mutations of a valid bundle: none may verify, and nothing but an
EdgepackError may escape (issue 2, item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import edgepack as ep


@pytest.fixture(scope="module")
def valid_bundle(tmp_path_factory, onnx_bytes, release_keys) -> tuple[bytes, ep.Trust]:
    from support.models import TINY_IO, golden_npz

    b = ep.BundleBuilder("fuzz", 1, io=TINY_IO)
    b.add_artifact("tiny.fp32.onnx", onnx_bytes, format="onnx", precision="fp32")
    b.set_golden(golden_npz(onnx_bytes))
    path = b.write(tmp_path_factory.mktemp("fuzz") / "fuzz-1.edgepack", release_keys[:1])
    trust = ep.Trust.of([release_keys[0].public])
    ep.verify_bundle(path, trust)
    return path.read_bytes(), trust


mutation = st.lists(
    st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation)
def test_no_mutated_bundle_verifies(valid_bundle, tmp_path: Path, mutations) -> None:
    data, trust = valid_bundle
    buf = bytearray(data)
    for where, xor in mutations:
        buf[int(where * len(buf))] ^= xor
    assume(bytes(buf) != data)  # two flips of one byte can cancel out
    path = tmp_path / "m.edgepack"
    path.write_bytes(bytes(buf))
    with pytest.raises(ep.EdgepackError):
        ep.verify_bundle(path, trust)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 1 << 16), st.binary(max_size=64))
def test_truncated_or_extended_bundles_never_verify(valid_bundle, tmp_path: Path, cut: int, tail: bytes) -> None:
    data, trust = valid_bundle
    mutated = data[: min(cut, len(data) - 1)] + tail
    assume(mutated != data)
    path = tmp_path / "t.edgepack"
    path.write_bytes(mutated)
    with pytest.raises(ep.EdgepackError):
        ep.verify_bundle(path, trust)
