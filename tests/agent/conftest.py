"""Fixtures for the agent tests: the real fleet server (Flask app, SQLite, the
TUF repository) on a real HTTP server on 127.0.0.1, real signed bundles, and
devices with a real A/B install store."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import BaseWSGIServer, make_server

from edgepack import SigningKey, Trust, generate_key, save_key_pair
from fleet_server import FleetConfig, create_app
from fleet_server._bp_admin import create_admin_token
from fleet_server._publish import create_tuf
from runtime import InstallStore
from runtime.agent import Agent, AgentConfig, StoreInstaller


@dataclass
class FleetEnv:
    url: str
    app: Any
    admin: str
    instance: Path
    root: bytes
    server: BaseWSGIServer
    thread: threading.Thread
    federated: SigningKey

    @property
    def fleet(self) -> Any:
        return self.app.extensions["edgepack_fleet"]

    def admin_call(self, method: str, path: str, body: bytes | dict | None = None) -> Any:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.admin}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (loopback)
            return json.loads(resp.read() or b"null")

    def enrollment_token(self, group: str = "default") -> str:
        return self.admin_call("POST", "/api/v1/admin/enrollment-tokens", {"group": group})["token"]

    def upload(self, bundle: Path) -> dict[str, Any]:
        return self.admin_call("POST", "/api/v1/admin/releases", bundle.read_bytes())

    def roll_out(self, release_id: int, group: str = "default") -> dict[str, Any]:
        return self.admin_call("POST", "/api/v1/admin/rollouts",
                               {"release": release_id, "group": group, "waves": [100]})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def start(self, port: int = 0) -> None:
        self.server = make_server("127.0.0.1", port, self.app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def fleet_env(tmp_path: Path, trust: Trust) -> Iterator[FleetEnv]:
    inst = tmp_path / "instance"
    inst.mkdir()
    trust.save(inst / "release-trust.json")
    roots = []
    for i in range(2):
        priv, _ = save_key_pair(generate_key(), tmp_path / "offline-root", f"root{i}")
        roots.append(priv)
    create_tuf(inst, roots, 2, ["default"])
    from edgepack import load_signing_key

    federated = load_signing_key(inst / "tuf" / "federated.key")
    config = FleetConfig(instance_dir=inst, secret_key="agent-tests", testing=True, tick_interval_s=0,
                         poll_after_s=30)
    app = create_app(config)
    admin = create_admin_token(app.extensions["edgepack_fleet"].db, "tests")
    env = FleetEnv("", app, admin, inst, (inst / "tuf/repo/metadata/1.root.json").read_bytes(),
                   None, None, federated)  # type: ignore[arg-type]
    env.start()
    yield env
    env.stop()


@pytest.fixture
def make_agent(tmp_path: Path, fleet_env: FleetEnv, trust: Trust) -> Callable[..., Agent]:
    def make(name: str = "dev1", enroll: bool = True, **kw: Any) -> Agent:
        state = tmp_path / name
        store = InstallStore(state / "store", trust, update_trust=Trust.of([fleet_env.federated.public]))
        cfg = AgentConfig(poll_interval_s=1, backoff_base_s=1, backoff_max_s=8, timeout_s=10,
                          telemetry_interval_s=1)
        agent = Agent(state, fleet_env.url, StoreInstaller(store), trust, fleet_env.root, config=cfg, **kw)
        if enroll and not agent.state.device_id:
            agent.enroll(fleet_env.enrollment_token(), name)
        return agent

    return make
