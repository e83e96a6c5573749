"""Simulated devices: each a real ``edgepack device run`` process with its own state and data.

A device gets its local data (``data.npz``), its eligibility facts
(``conditions.json``, all true: plugged in, idle, on wifi) and the trust anchors
given out of band (release trust, update trust, TUF root), then enrolls with a
one-time token and runs the agent loop until it is sent SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import numpy as np

from ._errors import SimulationError
from ._fleet import CLI, LocalFleet, clean_env, die_with_parent

__all__ = ["DeviceProcess"]


class DeviceProcess:
    """One device agent process under ``root/devices/sim-I/``."""

    def __init__(self, fleet: LocalFleet, index: int, x: np.ndarray, y: np.ndarray, *, epochs: int,
                 poll_interval_s: float) -> None:
        self.name = f"sim-{index}"
        self.dir = fleet.root / "devices" / self.name
        self.state = self.dir / "state"
        self.dir.mkdir(parents=True, exist_ok=True)
        np.savez(self.dir / "data.npz", x=x, y=y)
        (self.dir / "conditions.json").write_text(json.dumps({"charging": True, "idle": True, "wifi": True}))
        self.log = self.dir / "agent.log"
        self.fleet, self.epochs, self.poll = fleet, epochs, poll_interval_s
        self.samples = len(y)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, enroll_token: str) -> None:
        f = self.fleet
        cmd = [*CLI, "device", "run", "--server", f.url, "--state", str(self.state),
               "--trust", str(f.root / "release-trust.json"), "--update-trust", str(f.root / "update-trust.json"),
               "--tuf-root", str(f.tuf_root), "--enroll-token", enroll_token, "--name", self.name,
               "--fl-data", str(self.dir / "data.npz"), "--conditions", str(self.dir / "conditions.json"),
               "--fl-epochs", str(self.epochs), "--poll-interval", str(self.poll)]
        env = clean_env(OMP_NUM_THREADS="1")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                         preexec_fn=die_with_parent)  # noqa: PLW1509

    def check_alive(self) -> None:
        """Raises SimulationError if the agent process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] if self.log.exists() else []
            raise SimulationError(f"device {self.name} exited with {self.proc.returncode}: {' '.join(tail)}",
                                  where=str(self.log))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the agent finishes its step and exits 0
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
