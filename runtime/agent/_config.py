"""Agent settings and the poll/backoff schedule (pure functions, no I/O)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, fields, replace
from typing import Any

from edgepack import ConfigError

__all__ = ["AgentConfig", "next_delay"]


@dataclass(frozen=True)
class AgentConfig:
    """How the agent polls. Defaults < ``EDGEPACK_AGENT_*`` env (``from_env``) < explicit args.

    ``jitter`` spreads a fleet's check-ins (±20 %) so a server restart does not
    make every device call back in the same second; failures back off
    exponentially from ``backoff_base_s`` to ``backoff_max_s``.

    Federated rounds: with ``fl_data`` (an ``.npz`` holding ``x`` and integer labels
    ``y``) the agent takes part in the rounds it is selected for; ``conditions_file``
    (JSON ``{"charging": bool, "idle": bool, "wifi": bool}``, written by the device's
    OS and re-read at every check-in) gives the eligibility facts it reports; a round
    is not started with less than ``fl_min_time_s`` (or twice the last training
    time) left before its deadline; ``fl_epochs`` is the local training length.

    Clock skew: when the server refuses a signed request as outside its clock window
    (``ClockSkewError``), the agent signs later requests with the server's time (from
    its ``Date`` header) if the two clocks differ by at most ``max_clock_correction_s``.
    Only request timestamps use it; TUF and bundle expiry always use the device's own
    clock, so a forged Date header can never make expired metadata look fresh.
    """

    poll_interval_s: float = 60.0
    jitter: float = 0.2
    backoff_base_s: float = 2.0
    backoff_max_s: float = 900.0
    timeout_s: float = 15.0
    telemetry_interval_s: float = 300.0
    fl_data: str | None = None
    conditions_file: str | None = None
    fl_min_time_s: float = 5.0
    fl_epochs: int = 30
    #: the largest device-clock error corrected from the server's Date header (0: never correct). The
    #: header is not signed, so this also bounds how far ahead a forger can make the device date its
    #: signed requests (a man in the middle could hold them back and deliver them that much later).
    max_clock_correction_s: float = 3600.0
    #: the longest wait the server's (unsigned) ``poll_after_s`` can ask for: a forged answer can delay
    #: the next check-in, and with it security updates, by at most this much
    max_poll_after_s: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 <= self.jitter < 1:
            raise ConfigError("jitter must be in [0, 1)", where="AgentConfig.jitter")
        for f in ("poll_interval_s", "backoff_base_s", "backoff_max_s", "timeout_s", "telemetry_interval_s",
                  "fl_min_time_s", "fl_epochs", "max_poll_after_s"):
            if getattr(self, f) <= 0:
                raise ConfigError(f"{f} must be > 0", where=f"AgentConfig.{f}")
        if self.max_clock_correction_s < 0:
            raise ConfigError("max_clock_correction_s must be >= 0", where="AgentConfig.max_clock_correction_s")
        if self.backoff_max_s < self.backoff_base_s:
            raise ConfigError("backoff_max_s must be >= backoff_base_s", where="AgentConfig.backoff_max_s")

    @classmethod
    def from_env(cls, **overrides: Any) -> AgentConfig:
        """Defaults, then ``EDGEPACK_AGENT_<FIELD>`` variables, then ``overrides``.

        Raises:
            ConfigError: a numeric variable is not a number.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"EDGEPACK_AGENT_{f.name.upper()}")
            if raw is None:
                continue
            if "str" in str(f.type):
                values[f.name] = raw or None
                continue
            try:
                values[f.name] = int(raw) if str(f.type) == "int" else float(raw)
            except ValueError as e:
                raise ConfigError(f"EDGEPACK_AGENT_{f.name.upper()}={raw!r} is not a number") from e
        return replace(cls(**values), **{k: v for k, v in overrides.items() if v is not None})


def next_delay(config: AgentConfig, failures: int, poll_after_s: float | None,
               rng: random.Random | None = None) -> float:
    """Seconds until the next check-in.

    After a success: the server's ``poll_after_s`` (or the configured interval)
    ± ``jitter``, never longer than ``max_poll_after_s`` (the answer carrying it is not
    signed, so a forged one must not silence the device). After ``failures`` consecutive failures: "equal jitter"
    exponential backoff, uniform in [cap/2, cap] with cap = base * 2^(failures-1),
    bounded by ``backoff_max_s``.
    """
    rng = rng or random.Random()
    if failures <= 0:
        base = poll_after_s if poll_after_s and poll_after_s > 0 else config.poll_interval_s
        base = min(base, max(config.poll_interval_s, config.max_poll_after_s))
        return base * rng.uniform(1 - config.jitter, 1 + config.jitter)
    cap = min(config.backoff_max_s, config.backoff_base_s * 2 ** min(failures - 1, 30))
    return rng.uniform(cap / 2, cap)
