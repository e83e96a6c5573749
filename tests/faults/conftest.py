"""Fixtures for the fault-injection tests: a fleet instance initialised by the real CLI,
and (from tests/support/fleet_app.py) the release key and trust file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support.fleet_app import release_key, trust_file  # noqa: F401  (fixtures)
from support.server import CLI


@pytest.fixture
def instance(tmp_path: Path, trust_file: Path) -> tuple[Path, str]:  # noqa: F811
    """(instance dir, admin token) of a fresh ``edgepack fleet init``."""
    inst = tmp_path / "instance"
    out = subprocess.run([*CLI, "fleet", "init", "--instance", str(inst), "--release-trust", str(trust_file),
                          "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return inst, json.loads(out.stdout)["admin_token"]
