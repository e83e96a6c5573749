"""Fleet server configuration: one frozen dataclass, loaded one way.

Defaults -> ``INSTANCE/fleet.json`` -> ``EDGEPACK_*`` environment variables ->
explicit arguments (STYLE rule 10). Secrets have no defaults: the session key
comes from the config, ``EDGEPACK_FLEET_SECRET_KEY`` or the ``secret_key`` file
that ``edgepack fleet init`` writes into the instance directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack import ConfigError

__all__ = ["FleetConfig", "load_config"]

CONFIG_FILE = "fleet.json"
SECRET_FILE = "secret_key"
TRUST_FILE = "release-trust.json"
_ENV = {
    "database_url": "EDGEPACK_DATABASE_URL",
    "secret_key": "EDGEPACK_FLEET_SECRET_KEY",
    "release_trust": "EDGEPACK_RELEASE_TRUST",
    "storage_dir": "EDGEPACK_FLEET_STORAGE",
    "tick_interval_s": "EDGEPACK_FLEET_TICK_S",
    "rate_limit_window_s": "EDGEPACK_RATE_LIMIT_WINDOW_S",
    "enroll_failure_limit": "EDGEPACK_ENROLL_FAILURE_LIMIT",
    "login_failure_limit": "EDGEPACK_LOGIN_FAILURE_LIMIT",
    "admin_auth_failure_limit": "EDGEPACK_ADMIN_AUTH_FAILURE_LIMIT",
    "dashboard_session_idle_s": "EDGEPACK_DASHBOARD_SESSION_IDLE_S",
    "dashboard_session_max_s": "EDGEPACK_DASHBOARD_SESSION_MAX_S",
}


@dataclass(frozen=True)
class FleetConfig:
    """Everything the server reads at start-up.

    ``database_url`` defaults to SQLite (WAL) at ``INSTANCE/fleet.db``;
    ``storage_dir`` to ``INSTANCE/artifacts``; ``release_trust`` (the trust file
    uploads are verified against) to ``INSTANCE/release-trust.json``.
    """

    instance_dir: Path = field(default_factory=lambda: Path("instance"))
    database_url: str | None = None
    secret_key: str | None = None
    release_trust: Path | None = None
    storage_dir: Path | None = None
    max_json_bytes: int = 1 << 20
    max_upload_bytes: int = 512 << 20
    max_skew_s: int = 300
    poll_after_s: int = 60
    online_after_s: int = 300
    #: how often a background thread advances rollouts and enforces deadlines (0: only on requests)
    tick_interval_s: float = 5.0
    #: a healthy report re-evaluates its rollout at most this often (a bad one always does)
    report_tick_interval_s: float = 1.0
    #: NORMAL survives a process crash (SIGKILL) in WAL mode; FULL also survives power loss
    sqlite_synchronous: str = "NORMAL"
    #: what ``fleet serve`` checks before serving: "integrity" (PRAGMA integrity_check), "quick" or "off"
    sqlite_startup_check: str = "integrity"
    session_cookie_secure: bool = False
    #: a dashboard session ends after this long without a dashboard request, and this long after its
    #: login whatever its activity (checked server-side on every dashboard request; docs/fleet.md)
    dashboard_session_idle_s: float = 8 * 3600.0
    dashboard_session_max_s: float = 24 * 3600.0
    #: failed enrollments / dashboard logins / admin-token checks one client IP may make per window
    #: before it is refused with 429 until the window ends (0 turns a limit off); see docs/fleet.md
    rate_limit_window_s: float = 60.0
    enroll_failure_limit: int = 10
    login_failure_limit: int = 10
    admin_auth_failure_limit: int = 100
    #: answer accepted heartbeats in a WSGI middleware before Flask (``_fastpath``; errors still go to Flask)
    checkin_fast_path: bool = True
    testing: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "instance_dir", Path(self.instance_dir))
        if self.sqlite_synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigError(f"sqlite_synchronous must be NORMAL or FULL, got {self.sqlite_synchronous!r}")
        for name in ("max_json_bytes", "max_upload_bytes", "max_skew_s", "poll_after_s", "online_after_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive", where=name)
        for name in ("rate_limit_window_s", "dashboard_session_idle_s", "dashboard_session_max_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive", where=name)
        for name in ("enroll_failure_limit", "login_failure_limit", "admin_auth_failure_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 (off) or positive", where=name)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.instance_dir / 'fleet.db').resolve()}"

    @property
    def artifacts_dir(self) -> Path:
        return Path(self.storage_dir) if self.storage_dir else self.instance_dir / "artifacts"

    @property
    def trust_path(self) -> Path:
        return Path(self.release_trust) if self.release_trust else self.instance_dir / TRUST_FILE

    def require_secret_key(self) -> str:
        """The session signing key.

        Raises:
            ConfigError: if none is configured (there is deliberately no default).
        """
        if self.secret_key:
            return self.secret_key
        path = self.instance_dir / SECRET_FILE
        try:
            key = path.read_text().strip()
        except OSError as e:
            raise ConfigError("no session secret key is configured", where=str(path),
                              hint="run 'edgepack fleet init' or set EDGEPACK_FLEET_SECRET_KEY") from e
        if len(key) < 32:
            raise ConfigError("the session secret key is shorter than 32 characters", where=str(path))
        return key


def _coerce(name: str, value: Any) -> Any:
    typ = {f.name: f.type for f in dataclasses.fields(FleetConfig)}[name]
    try:
        if "Path" in str(typ):
            return Path(value) if value not in (None, "") else None
        if typ in ("int", int):
            return int(value)
        if typ in ("float", float):
            return float(value)
        if typ in ("bool", bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name} has a bad value {value!r}", where=name) from e
    return value


def load_config(instance_dir: str | os.PathLike[str] | None = None, **overrides: Any) -> FleetConfig:
    """Build a config from the instance's ``fleet.json``, the environment and ``overrides``.

    Raises:
        ConfigError: if the config file is malformed or names an unknown field.
    """
    inst = Path(instance_dir or os.environ.get("EDGEPACK_FLEET_INSTANCE") or "instance")
    values: dict[str, Any] = {"instance_dir": inst}
    names = {f.name for f in dataclasses.fields(FleetConfig)}
    cfg_path = inst / CONFIG_FILE
    if cfg_path.exists():
        try:
            doc = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read {cfg_path}: {e}", where=str(cfg_path)) from e
        if not isinstance(doc, dict) or set(doc) - names:
            raise ConfigError(f"unknown field(s) in {cfg_path}: {sorted(set(doc) - names)}", where=str(cfg_path),
                              hint=f"known fields: {sorted(names)}")
        values.update({k: _coerce(k, v) for k, v in doc.items() if k != "instance_dir"})
    for name, env in _ENV.items():
        if os.environ.get(env):
            values[name] = _coerce(name, os.environ[env])
    unknown = set(overrides) - names
    if unknown:
        raise ConfigError(f"unknown config field(s): {sorted(unknown)}")
    values.update(overrides)
    return FleetConfig(**values)
