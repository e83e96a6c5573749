"""Fault: a device's download is dropped midway (a TCP proxy on 127.0.0.1 cuts the
link) and the agent is restarted; the next check-in resumes with a Range request."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from support.proxy import TargetProxy

from edgepack import BundleBuilder

from ..conftest import TINY_IO, golden_npz


@pytest.fixture
def proxy(fleet_env) -> Iterator[TargetProxy]:
    p = TargetProxy(("127.0.0.1", fleet_env.server.server_port))
    yield p
    p.close()


def test_dropped_download_resumes_after_an_agent_restart(fleet_env, proxy, make_agent, onnx_bytes,
                                                        release_keys, tmp_path, monkeypatch) -> None:
    fleet_env_url = fleet_env.url
    monkeypatch.setattr(fleet_env, "url", proxy.url)  # devices talk through the cutting proxy
    agent = make_agent()
    monkeypatch.setattr(fleet_env, "url", fleet_env_url)
    b = BundleBuilder("tiny", 1, io=TINY_IO, lineage={"seed": 0, "parent_version": None})
    b.add_artifact("tiny.fp32.onnx", onnx_bytes, format="onnx", precision="fp32")
    b.set_golden(golden_npz(onnx_bytes))
    b.add_report("calibration.bin", os.urandom(400_000))  # incompressible: the bundle is ~400 KB
    bundle = b.write(tmp_path / "tiny-1.edgepack", release_keys[:1])
    rel = fleet_env.upload(bundle)
    fleet_env.roll_out(rel["id"])

    proxy.cut_after = 150_000
    agent.step()
    assert agent.installer.active_version() is None and agent.state.consecutive_failures == 1
    assert agent.state.pending and agent.state.pending["version"] == 1
    part = next((tmp_path / "dev1" / "downloads").glob("*.part"))
    kept = part.stat().st_size
    assert 0 < kept < bundle.stat().st_size

    monkeypatch.setattr(fleet_env, "url", proxy.url)
    restarted = make_agent(enroll=False)  # a new process over the same state directory
    restarted.step()
    assert restarted.installer.active_version() == 1 and restarted.state.pending is None
    assert restarted.last_delivery["resumed_from"] == kept
    assert restarted.last_delivery["bytes_received"] == bundle.stat().st_size - kept
    assert f"Range: bytes={kept}-".encode() in proxy.target_requests[-1]
