"""The agent stays inside the device's dependency budget, and its schedule is sane."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from edgepack import ConfigError
from runtime.agent import AgentConfig, next_delay

FORBIDDEN = ("flask", "werkzeug", "sqlalchemy", "torch", "tensorflow", "requests", "fleet_server", "converters")


def test_runtime_agent_imports_only_base_dependencies() -> None:
    code = ("import sys, runtime.agent; "
            f"print([m for m in {FORBIDDEN!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("failures", range(1, 12))
def test_backoff_doubles_with_jitter_up_to_the_cap(failures: int) -> None:
    cfg = AgentConfig(backoff_base_s=2, backoff_max_s=300)
    cap = min(300, 2 * 2 ** (failures - 1))
    delays = [next_delay(cfg, failures, None, random.Random(seed)) for seed in range(50)]
    assert all(cap / 2 <= d <= cap for d in delays)
    assert len(set(delays)) > 40, "jitter spreads devices apart"


def test_poll_follows_the_server_with_jitter() -> None:
    cfg = AgentConfig(jitter=0.2)
    delays = [next_delay(cfg, 0, 30, random.Random(s)) for s in range(100)]
    assert min(delays) >= 24 and max(delays) <= 36 and max(delays) - min(delays) > 6


@pytest.mark.parametrize("bad", [{"jitter": 1.5}, {"poll_interval_s": 0}, {"backoff_base_s": 10, "backoff_max_s": 5}])
def test_bad_agent_config_is_a_config_error(bad: dict) -> None:
    with pytest.raises(ConfigError):
        AgentConfig(**bad)


@pytest.mark.parametrize("poll_after", [10**9, float("inf"), 1e300])
def test_a_forged_poll_after_cannot_put_the_agent_to_sleep_past_its_cap(poll_after: float) -> None:
    """``poll_after_s`` comes in the heartbeat answer, which is not signed (no TLS by default): one
    forged answer must not stop a device from checking in (and getting security updates) for years."""
    cfg = AgentConfig(jitter=0.2, poll_interval_s=60, max_poll_after_s=1800)
    delays = [next_delay(cfg, 0, poll_after, random.Random(s)) for s in range(50)]
    assert max(delays) <= 1800 * 1.2


def test_a_server_may_ask_for_a_poll_longer_than_the_backoff_cap_up_to_max_poll_after() -> None:
    cfg = AgentConfig(jitter=0.2, poll_interval_s=60, backoff_max_s=8, max_poll_after_s=3600)
    delays = [next_delay(cfg, 0, 600, random.Random(s)) for s in range(50)]
    assert min(delays) >= 600 * 0.8 and max(delays) <= 600 * 1.2
