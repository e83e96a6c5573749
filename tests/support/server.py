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

    def __init__(self, instance: Path, port: int | None = None, workers: int = 1, *,
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None, threads: int = 4) -> None:
        self.instance, self.port, self.workers = instance, port or free_port(), workers
        self.extra_args, self.env, self.threads = list(extra_args or []), dict(env or {}), threads
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "EDGEPACK_FLEET_TICK_S": "0.5", **self.env}
        self.instance.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # stderr to a file next to the instance, for failures
            self.proc = subprocess.Popen([*CLI, "fleet", "serve", "--instance", str(self.instance),
                                          "--host", "127.0.0.1", "--port", str(self.port),
                                          "--workers", str(self.workers), "--threads", str(self.threads),
                                          *self.extra_args],
                                         env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 60  # a shared 2-core machine under load can take a while
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise AssertionError(f"the server exited with {self.proc.returncode} while starting: {tail}")
            try:
                if http_json("GET", f"{self.url}/healthz", timeout=1)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("the server did not start within 60 s")
        # One worker answering is not all of them: gunicorn forks the others meanwhile, and a
        # test that spreads requests over the workers (or kills one) needs every one up.
        while time.monotonic() < deadline:
            if len(self.pids()) >= self.workers + 1:  # the master and its workers
                return
            time.sleep(0.05)
        raise AssertionError(f"gunicorn did not fork {self.workers} workers within 60 s")

    @property
    def log_path(self) -> Path:
        return self.instance.parent / f"server-{self.port}.log"

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (gunicorn's graceful stop) if it still runs; SIGKILL after 20 s. Safe to call twice."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def pids(self) -> list[int]:
        """The process group's pids (gunicorn master and workers), from /proc."""
        assert self.proc is not None
        out = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == self.proc.pid:  # field 5 of /proc/PID/stat: the process group
                    out.append(int(d.name))
        return out
