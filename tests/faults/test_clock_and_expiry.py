"""Faults: a device clock that is off, and a server that stays away past the TUF metadata expiry.

The server is the real one (gunicorn subprocess, real clock); the device is the real agent
in this process with a skewed clock: its request-signing clock (``FleetClient.clock``) and,
where the test says so, the clock python-tuf checks expiry against.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import types

import pytest
from support.faults import FleetProc, linear_bundle

import runtime
from edgepack import load_signing_key, load_trust
from runtime.agent import Agent, AgentConfig, StoreInstaller
from runtime.agent._errors import ServerRefusedError

pytestmark = pytest.mark.slow


@pytest.fixture
def fleet(tmp_path, trust_file):
    f = FleetProc(tmp_path, trust_file, tuf=True)
    with f:
        yield f


def _agent(fleet, tmp_path, trust_file, skew_s: float = 0.0, **cfg) -> Agent:
    trust = load_trust(trust_file)
    state = tmp_path / "device"
    store = runtime.InstallStore(state / "store", trust)
    config = AgentConfig(poll_interval_s=1, backoff_base_s=1, backoff_max_s=4, timeout_s=10, **cfg)
    agent = Agent(state, fleet.url, StoreInstaller(store), trust, fleet.tuf_root.read_bytes(), config=config)
    agent.api.clock = lambda: time.time() + skew_s
    if not agent.state.device_id:
        agent.enroll(fleet.enrollment_token(), "skewed")
    return agent


def _release(fleet, tmp_path, key, version: int) -> None:
    st, rel = fleet.admin("POST", "/releases", raw=linear_bundle(tmp_path, key, version).read_bytes())
    assert st == 201, rel
    st, doc = fleet.admin("POST", "/rollouts", {"release": rel["id"], "group": "default", "waves": [100]})
    assert st == 201, doc


def _serving(agent: Agent, trust_file, version: int) -> None:
    store = runtime.InstallStore(agent.dir / "store", load_trust(trust_file))
    model = store.load_active(allow_fallback=False)
    assert model.version == version and runtime.health_check(model).ok


@pytest.fixture
def device_tuf_clock(monkeypatch):
    """Shift the clock python-tuf checks metadata expiry against (the device's own clock)."""
    import tuf.ngclient._internal.trusted_metadata_set as tms

    def shift(by: dt.timedelta) -> None:
        class Shifted(dt.datetime):
            @classmethod
            def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
                return dt.datetime.now(tz) + by

        monkeypatch.setattr(tms, "datetime", types.SimpleNamespace(datetime=Shifted, timezone=dt.timezone))

    return shift


def test_request_signed_outside_the_window_is_refused_with_an_error_naming_clock_skew(fleet, tmp_path, trust_file):
    agent = _agent(fleet, tmp_path, trust_file, max_clock_correction_s=0)
    for skew_s in (600, -600):
        agent.api.clock = lambda skew_s=skew_s: time.time() + skew_s
        with pytest.raises(ServerRefusedError) as e:
            agent.api.call("POST", f"/api/v1/devices/{agent.state.device_id}/heartbeat", {"active_version": None},
                           key=agent._key(), device_id=agent.state.device_id)
        assert e.value.status == 401
        assert "ClockSkewError" in e.value.message and "clock skew" in e.value.message
        said = re.search(r"timestamp is ([+-]\d+) s off the server clock", e.value.message)
        assert said and abs(int(said.group(1)) - skew_s) <= 2, e.value.message
        failures = agent.state.consecutive_failures
        agent.step()
        assert agent.state.consecutive_failures == failures + 1 and agent.api.clock_offset_s == 0


def test_agent_adopts_the_server_date_for_request_signing_and_installs(fleet, tmp_path, trust_file, release_key):
    agent = _agent(fleet, tmp_path, trust_file)  # enrolled first: the rollout assigns it
    for version, skew_s in ((1, -600), (2, 600)):
        agent.api.clock = lambda skew_s=skew_s: time.time() + skew_s
        _release(fleet, tmp_path, release_key, version)
        agent.step()
        assert agent.state.consecutive_failures == 0
        assert abs(agent.api.clock_offset_s + skew_s) <= 2  # the Date header has whole seconds
        _serving(agent, trust_file, version)


def test_metadata_expired_by_the_device_clock_is_refused_even_when_the_date_header_says_otherwise(
        fleet, tmp_path, trust_file, release_key, device_tuf_clock):
    # The device's clock runs two days ahead: past the one-day timestamp. The Date header fixes
    # request signing, but never TUF expiry (or a forged Date could defeat the freeze defence).
    agent = _agent(fleet, tmp_path, trust_file, max_clock_correction_s=7 * 86400)
    _release(fleet, tmp_path, release_key, 1)
    agent.step()
    _serving(agent, trust_file, 1)
    _release(fleet, tmp_path, release_key, 2)
    agent.api.clock = lambda: time.time() + 2 * 86400
    device_tuf_clock(dt.timedelta(days=2))
    agent.step()
    assert agent.state.consecutive_failures == 1 and abs(agent.api.clock_offset_s + 2 * 86400) <= 2
    reasons = [r["reason"] for _, r in agent.outbox.pending() if r["kind"] == "status"]
    assert any("expired" in (r or "") for r in reasons), reasons
    _serving(agent, trust_file, 1)  # v2 is not installed; v1 keeps serving, verified

    agent.api.clock = time.time  # the clock is fixed (NTP): the next check-in installs v2
    device_tuf_clock(dt.timedelta(0))
    agent.step()
    assert agent.state.consecutive_failures == 0
    _serving(agent, trust_file, 2)


def test_server_away_past_the_metadata_expiry_the_device_keeps_serving_refuses_stale_metadata_and_recovers(
        fleet, tmp_path, trust_file, release_key):
    from fleet_server._tuf import TufConfig, TufRepository

    agent = _agent(fleet, tmp_path, trust_file)
    _release(fleet, tmp_path, release_key, 1)
    agent.step()
    _serving(agent, trust_file, 1)

    fleet.server.stop()
    tuf = fleet.inst / "tuf"
    repo = TufRepository(tuf / "repo", load_signing_key(tuf / "online.key"), load_signing_key(tuf / "federated.key"))
    expires_in = 3
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    repo._timestamp(now - TufConfig().timestamp_lifetime + dt.timedelta(seconds=expires_in))  # the last one signed
    agent.step()
    assert agent.state.consecutive_failures == 1
    time.sleep(expires_in + 1.5)  # the server stays away longer than that timestamp is valid
    agent.step()
    assert agent.state.consecutive_failures == 2
    _serving(agent, trust_file, 1)

    fleet.server.env = {"EDGEPACK_FLEET_TICK_S": "0"}  # back, but nothing has re-signed the timestamp yet
    fleet.server.start()
    agent.step()
    assert agent.state.consecutive_failures == 3
    reasons = [r["reason"] for _, r in agent.outbox.pending() if r["kind"] == "status"]
    assert any("expired" in (r or "") for r in reasons), reasons  # the freeze defence
    _serving(agent, trust_file, 1)

    fleet.server.stop()
    fleet.server.env = {}  # the background tick re-signs the online roles that are due
    fleet.server.start()
    deadline = time.monotonic() + 20
    while agent.state.consecutive_failures and time.monotonic() < deadline:
        agent.step()
        time.sleep(0.3)
    assert agent.state.consecutive_failures == 0
    _release(fleet, tmp_path, release_key, 2)
    agent.step()
    _serving(agent, trust_file, 2)
