"""Fixtures shared by every test folder: keys, trust files, tiny real models
and signed bundles. Area-specific fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support.models import TINY_IO, golden_npz, tiny_onnx_model
from support.postgres import database_url, postgres_server  # noqa: F401  (fixtures shared by every DB test)

from edgepack import BundleBuilder, SigningKey, Trust, generate_key


@pytest.fixture(scope="session")
def onnx_bytes() -> bytes:
    return tiny_onnx_model()


@pytest.fixture(scope="session")
def other_onnx_bytes() -> bytes:
    return tiny_onnx_model(in_features=6, out_features=2, seed=1)


@pytest.fixture(scope="session")
def release_keys() -> list[SigningKey]:
    return [generate_key() for _ in range(3)]


@pytest.fixture(scope="session")
def trust(release_keys: list[SigningKey]) -> Trust:
    return Trust.of([k.public for k in release_keys[:1]], threshold=1)


@pytest.fixture
def make_bundle(tmp_path: Path, onnx_bytes: bytes, release_keys: list[SigningKey]) -> Callable[..., Path]:
    """Build a real signed bundle around the tiny ONNX model."""

    def make(name: str = "tiny", version: int = 1, keys: list[SigningKey] | None = None,
             out: Path | None = None, **kw: object) -> Path:
        b = BundleBuilder(name, version, io=TINY_IO, lineage={"seed": 0, "parent_version": None}, **kw)  # type: ignore[arg-type]
        b.add_artifact("tiny.fp32.onnx", onnx_bytes, format="onnx", precision="fp32",
                       parity={"passed": True, "max_abs": 0.0, "cosine": 1.0})
        b.set_golden(golden_npz(onnx_bytes))
        b.add_report("report.json", b'{"ok": true}')
        return b.write(out or tmp_path / f"{name}-{version}.edgepack", release_keys[:1] if keys is None else keys)

    return make


@pytest.fixture
def edgepack_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from edgepack.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run

