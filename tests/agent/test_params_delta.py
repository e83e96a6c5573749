"""Parameter updates over TUF: the delta is served when it is smaller, the device
rebuilds the artifact and the store checks it against the signed hash; a delta
that does not fit the device falls back to the full update."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgepack import BundleBuilder
from edgepack._params import encode_param_update, read_weights

from ..conftest import tiny_onnx_model

N_IN, N_OUT = 128, 32
ART = "artifacts/wide.fp32.onnx"
WIDE_IO = {
    "task": "regression",
    "inputs": [{"name": "input", "shape": ["batch", N_IN], "dtype": "float32", "layout": "NC",
                "normalization": None, "range": None, "reference": None}],
    "outputs": [{"name": "logits", "shape": ["batch", N_OUT], "dtype": "float32"}],
}


@pytest.fixture(scope="module")
def wide_onnx() -> bytes:
    return tiny_onnx_model(N_IN, N_OUT, seed=3)


def _bundle(path: Path, model: bytes, keys) -> Path:
    x = np.random.default_rng(0).standard_normal((4, N_IN)).astype(np.float32)
    y = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    buf = io.BytesIO()
    np.savez(buf, in__input=x, out__logits=y, **{"wide.fp32.onnx__logits": y})
    b = BundleBuilder("wide", 1, io=WIDE_IO, lineage={"seed": 3, "parent_version": None})
    b.add_artifact("wide.fp32.onnx", model, format="onnx", precision="fp32")
    b.set_golden(buf.getvalue())
    return b.write(path, keys)


def _update(base: bytes, new_w: np.ndarray, key, encoding: str) -> bytes:
    data, _ = encode_param_update(model="wide", version=2, base_version=1, base_artifacts={ART: ("onnx", base)},
                                  new_weights={ART: {"W": new_w}}, keys=[key], encoding=encoding)
    return data


def install_wide_v1(fleet_env, make_agent, wide_onnx, release_keys, tmp_path):
    """Roll out the wide model v1 to a fresh agent; return (agent, release, W, fine-tuned W)."""
    agent = make_agent()
    rel = fleet_env.upload(_bundle(tmp_path / "wide-1.edgepack", wide_onnx, release_keys[:1]))
    fleet_env.roll_out(rel["id"])
    agent.step()
    assert agent.installer.active_version() == 1
    w = read_weights("onnx", wide_onnx, ["W"])["W"]
    fine_tuned = w.copy()
    fine_tuned[:, :4] += 0.01 * np.random.default_rng(1).standard_normal((N_IN, 4)).astype(np.float32)
    return agent, rel, w, fine_tuned


@pytest.fixture
def installed(fleet_env, make_agent, wide_onnx, release_keys, tmp_path):
    agent, _, w, fine_tuned = install_wide_v1(fleet_env, make_agent, wide_onnx, release_keys, tmp_path)
    return agent, w, fine_tuned


def _release(pub) -> dict:
    return {"name": "wide", "version": 2, "target": pub.target, "sha256": pub.sha256, "size": pub.length,
            "kind": "params", "base_version": 1}


def test_delta_is_served_when_smaller_and_rebuilds_the_signed_model(fleet_env, installed, wide_onnx) -> None:
    agent, _, fine_tuned = installed
    full = _update(wide_onnx, fine_tuned, fleet_env.federated, "whole")
    delta = _update(wide_onnx, fine_tuned, fleet_env.federated, "delta-xor")
    pub = fleet_env.fleet.publisher.repo.publish_params("wide", 2, full, delta=(1, delta))
    assert pub.delta_target is not None and pub.delta_length == len(delta) < len(full)
    agent._deliver(_release(pub))
    assert agent.installer.active_version() == 2
    assert agent.last_delivery["delta"] is True and agent.last_delivery["bytes_received"] == len(delta)
    x = np.random.default_rng(5).standard_normal((3, N_IN)).astype(np.float32)
    b = read_weights("onnx", wide_onnx, ["B"])["B"]
    np.testing.assert_allclose(agent.installer.model().predict(x), x @ fine_tuned + b, rtol=1e-5, atol=1e-5)


def test_delta_that_is_not_smaller_is_not_published(fleet_env, installed, wide_onnx) -> None:
    _, _, fine_tuned = installed
    full = _update(wide_onnx, fine_tuned, fleet_env.federated, "delta-xor")
    pub = fleet_env.fleet.publisher.repo.publish_params("wide", 2, full, delta=(1, full + b"pad"))
    assert pub.delta_target is None


def test_delta_for_another_base_falls_back_to_the_full_update(fleet_env, installed, wide_onnx) -> None:
    agent, w, fine_tuned = installed
    full = _update(wide_onnx, fine_tuned, fleet_env.federated, "whole")
    nudged = w.copy()
    nudged[0, 0] += 1.0
    other_base = encode_param_update(model="wide", version=9, base_version=1, base_artifacts={ART: ("onnx", wide_onnx)},
                                     new_weights={ART: {"W": nudged}}, keys=[fleet_env.federated])[1][ART]
    # A delta made against weights the device does not run: small, TUF-signed, and wrong.
    wrong = _update(other_base, fine_tuned, fleet_env.federated, "delta-xor")
    pub = fleet_env.fleet.publisher.repo.publish_params("wide", 2, full, delta=(1, wrong))
    assert pub.delta_target is not None
    agent._deliver(_release(pub))
    assert agent.installer.active_version() == 2 and agent.last_delivery["delta"] is False
