"""A real fleet server in a subprocess on 127.0.0.1 (gunicorn via the CLI), for
tests that SIGKILL it mid-work; and a tiny JSON HTTP client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-c", "import sys; from edgepack.cli import main; sys.exit(main())"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 10.0) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Server:
    """``edgepack fleet serve`` in its own process group, so SIGKILL reaches the
    gunicorn master and every worker at once."""

    def __init__(self, instance: Path, port: int | None = None, workers: int = 1) -> None:
        self.instance, self.port, self.workers = instance, port or free_port(), workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "EDGEPACK_FLEET_TICK_S": "0.5"}
        self.proc = subprocess.Popen([*CLI, "fleet", "serve", "--instance", str(self.instance), "--host", "127.0.0.1",
                                      "--port", str(self.port), "--workers", str(self.workers), "--threads", "4"],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if http_json("GET", f"{self.url}/healthz", timeout=1)[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the server did not start within 30 s")

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
