"""Fixtures for the TUF tests: a real repository on disk, served by a real HTTP
server on 127.0.0.1, with hooks an attacker (a compromised mirror or a man in
the middle) would have: replace any response, stream endless bytes, or cut a
download midway."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata

from edgepack import SigningKey, generate_key
from fleet_server._tuf import TufRepository
from fleet_server._tuf_http import TufHTTPServer, TufRequestHandler, serve_tuf
from fleet_server._tuf_signer import EdgepackSigner
from runtime.agent._tuf_client import TufClient


@dataclass
class Keys:
    root: list[SigningKey]
    online: SigningKey
    federated: SigningKey


@pytest.fixture(scope="session")
def tuf_keys() -> Keys:
    return Keys([generate_key() for _ in range(3)], generate_key(), generate_key())


@pytest.fixture
def repo(tmp_path: Path, tuf_keys: Keys) -> TufRepository:
    return TufRepository.create(tmp_path / "repo", tuf_keys.root, 2, tuf_keys.online, tuf_keys.federated,
                                groups=["default", "canary"])


@dataclass
class Attacker:
    """What a malicious mirror can do to responses (keys: URL path after /tuf/)."""

    replace: dict[str, bytes] = field(default_factory=dict)
    endless: set[str] = field(default_factory=set)
    drop_after: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    bytes_sent: int = 0


class AttackHandler(TufRequestHandler):
    def _key(self) -> str:
        return self.path.split("?", 1)[0].removeprefix("/tuf/")

    def do_GET(self) -> None:  # noqa: N802
        atk: Attacker = self.server.attacker  # type: ignore[attr-defined]
        key = self._key()
        atk.requests.append((key, dict(self.headers.items())))
        if key in atk.endless:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            block = b"{" * 65536
            for _ in range(1024):  # 64 MiB at most: bounded, and far past any limit
                try:
                    self.wfile.write(block)
                except OSError:
                    return
            return
        if key in atk.replace:
            data = atk.replace[key]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        super().do_GET()

    def write_body(self, file: Path, offset: int, count: int) -> None:
        atk: Attacker = self.server.attacker  # type: ignore[attr-defined]
        limit = atk.drop_after.pop(self._key(), None)
        if limit is not None:
            with open(file, "rb") as f:
                f.seek(offset)
                data = f.read(limit)
            self.wfile.write(data)
            atk.bytes_sent += len(data)
            self.close_connection = True
            self.wfile.flush()
            self.connection.shutdown(2)  # drop the link mid-body
            return
        atk.bytes_sent += count
        super().write_body(file, offset, count)


@pytest.fixture
def served(repo: TufRepository) -> Iterator[tuple[TufHTTPServer, Attacker]]:
    server, thread = serve_tuf(repo, handler=AttackHandler)
    attacker = Attacker()
    server.attacker = attacker  # type: ignore[attr-defined]
    yield server, attacker
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def make_client(tmp_path: Path, served: tuple[TufHTTPServer, Attacker],
                repo: TufRepository) -> Callable[..., TufClient]:
    def make(name: str = "device", **kw: Any) -> TufClient:
        return TufClient(tmp_path / name, served[0].url, repo.root_bytes(), timeout=5, **kw)

    return make


def forge(repo: TufRepository, role: str, signer: EdgepackSigner, mutate: Callable[[Any], None]) -> None:
    """Write a new version of ``role`` signed by ``signer``, plus a fresh snapshot and
    timestamp signed by the online key: what an attacker holding the online keys can do."""
    md = Metadata.from_bytes(repo.metadata_bytes(f"{role}.json"))
    mutate(md.signed)
    md.signed.version += 1
    md.sign(signer)
    repo._write(role, md)
    repo._snapshot_and_timestamp([(role, md)], dt.datetime.now(dt.UTC))
