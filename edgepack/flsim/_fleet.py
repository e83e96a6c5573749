"""A throwaway local fleet: keys, an initialised instance with TUF, the server process, admin calls.

Every secret is made on the spot and only written to files of mode 0600 under
the simulation's directory (``keys/`` and ``admin-token``); nothing secret is
printed. The server is the real one (``edgepack fleet serve``: gunicorn, SQLite)
on 127.0.0.1, in its own process group so that stopping it stops its workers.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .._atomic import atomic_write
from ._errors import SimulationError

__all__ = ["CLI", "LocalFleet", "clean_env", "die_with_parent", "free_port"]

CLI = [sys.executable, "-m", "edgepack"]
#: the caller's fleet settings must not leak into the simulation's own fleet (another database, secret...)
FLEET_ENV = ("EDGEPACK_DATABASE_URL", "EDGEPACK_FLEET_SECRET_KEY", "EDGEPACK_RELEASE_TRUST", "EDGEPACK_FLEET_STORAGE",
             "EDGEPACK_FLEET_TICK_S", "EDGEPACK_FLEET_INSTANCE", "PROMETHEUS_MULTIPROC_DIR")


def die_with_parent() -> None:
    """``preexec_fn`` for every child: on Linux the kernel sends it SIGTERM when the simulation's process
    dies, even by SIGKILL (``PR_SET_PDEATHSIG``), so no server or agent outlives it. Best effort elsewhere."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: no inherited ``EDGEPACK_*`` fleet or agent settings."""
    env = {k: v for k, v in os.environ.items() if k not in FLEET_ENV and not k.startswith("EDGEPACK_AGENT_")}
    return {**env, "EDGEPACK_NO_PROGRESS": "1", **extra}
#: fast polling and ticking, so a round trip (round, upload, promotion, rollout) takes seconds, not minutes
FLEET_SETTINGS = {"poll_after_s": 1, "tick_interval_s": 0.5, "report_tick_interval_s": 0.2}


class _ExitedAtStart(Exception):
    """The server process ended before it answered (internal: ``start`` retries or raises)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalFleet:
    """The fleet under ``root``: ``instance/``, ``keys/``, ``admin-token``, ``server.log``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.instance = self.root / "instance"
        self.keys = self.root / "keys"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._token = ""

    # ---- set-up ------------------------------------------------------------------------------
    def init(self) -> Any:
        """Create the release key, the offline TUF root key, the instance and an admin token.

        Returns the release signing key (to sign the first bundle).
        """
        from edgepack import Trust, generate_key, load_signing_key, save_key_pair
        from fleet_server._bp_admin import create_admin_token, ensure_group
        from fleet_server._config import SECRET_FILE, TRUST_FILE, load_config
        from fleet_server._db import Database
        from fleet_server._publish import create_tuf

        self.instance.mkdir(parents=True, exist_ok=False)
        release, _ = save_key_pair(generate_key(), self.keys, "release")
        root_key, _ = save_key_pair(generate_key(), self.keys, "tuf-root")
        release_key = load_signing_key(release)
        Trust.of([release_key.public]).save(self.root / "release-trust.json")
        Trust.of([release_key.public]).save(self.instance / TRUST_FILE)
        (self.instance / "fleet.json").write_text(json.dumps(FLEET_SETTINGS, indent=1) + "\n")
        atomic_write(self.instance / SECRET_FILE, (secrets.token_urlsafe(48) + "\n").encode(), mode=0o600)
        config = load_config(self.instance, database_url=None, secret_key=None, release_trust=None,
                             storage_dir=None)
        db = Database(config.db_url, sqlite_synchronous=config.sqlite_synchronous)
        db.create_schema()
        with db.write() as s:
            ensure_group(s, "default")
        create_tuf(self.instance, [root_key], 1, ["default"])
        self._token = create_admin_token(db, "simulate")
        db.dispose()
        atomic_write(self.root / "admin-token", (self._token + "\n").encode(), mode=0o600)
        federated = load_signing_key(self.instance / "tuf" / "federated.key")
        Trust.of([federated.public]).save(self.root / "update-trust.json")
        return release_key

    @property
    def tuf_root(self) -> Path:
        return self.instance / "tuf" / "repo" / "metadata" / "1.root.json"

    # ---- the server process --------------------------------------------------------------------
    def start(self, port: int | None = None, timeout_s: float = 60.0, attempts: int = 3) -> str:
        """Start ``edgepack fleet serve`` on 127.0.0.1; return its URL once ``/healthz`` answers.

        Without ``port`` a free one is picked; if the server exits at start-up (another process took
        the port between the pick and gunicorn's bind), it is tried again on a new port.

        Raises:
            SimulationError: it exited or did not answer in time (see ``server.log``).
        """
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(port or free_port(), timeout_s)
            except _ExitedAtStart:
                if port is not None or attempt == attempts:
                    raise SimulationError(f"the fleet server exited at start-up ({attempt} attempt(s))",
                                          where=str(self.root / "server.log"), hint="read the server log") from None
        raise AssertionError("unreachable")

    def _start_once(self, port: int, timeout_s: float) -> str:
        self.url = f"http://127.0.0.1:{port}"
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 (the child keeps it open)
        self.proc = subprocess.Popen([*CLI, "fleet", "serve", "--instance", str(self.instance), "--host",
                                      "127.0.0.1", "--port", str(port), "--workers", "1", "--threads", "8"],
                                     stdout=log, stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True,
                                     preexec_fn=die_with_parent)  # noqa: PLW1509 (no threads spawn children here)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise _ExitedAtStart
            try:  # our own TUF root, not just any server's /healthz: the port may have been taken
                with urllib.request.urlopen(self.url + "/tuf/metadata/1.root.json", timeout=2) as r:  # noqa: S310
                    if r.read() == self.tuf_root.read_bytes() and self.proc.poll() is None:
                        return self.url
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SimulationError(f"the fleet server did not answer within {timeout_s:.0f} s",
                              where=str(self.root / "server.log"))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def wait(self) -> None:
        """Block until the server exits (``--serve``; Ctrl-C ends it)."""
        if self.proc is not None:
            self.proc.wait()

    # ---- the admin API -----------------------------------------------------------------------
    def call(self, method: str, path: str, body: dict[str, Any] | bytes | None = None) -> Any:
        """One admin request; the JSON answer.

        Raises:
            SimulationError: the server refused it or could not be reached.
        """
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        ctype = "application/octet-stream" if isinstance(body, bytes) else "application/json"
        req = urllib.request.Request(self.url + "/api/v1/admin" + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self._token}", "Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 (loopback)
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                doc = json.loads(e.read() or b"{}")
            except ValueError:
                doc = {}
            raise SimulationError(f"the server answered {e.code} to {method} {path}: {doc.get('message', e.reason)}",
                                  where=str(self.root / "server.log"), hint=doc.get("hint")) from e
        except OSError as e:
            raise SimulationError(f"cannot reach the local fleet server: {e}",
                                  where=str(self.root / "server.log")) from e
