"""The root: offline (never stored), threshold-signed, and rotatable."""

from __future__ import annotations

import pytest

from edgepack import generate_key
from fleet_server._tuf_files import TufRepositoryError
from fleet_server._tuf_root import rotate_root


def test_root_private_keys_are_never_written_to_the_repository(repo, tuf_keys) -> None:
    blobs = b"".join(p.read_bytes() for p in repo.dir.rglob("*") if p.is_file())
    assert b"PRIVATE KEY" not in blobs
    for k in tuf_keys.root:
        assert k.private_pem() not in blobs


def test_root_has_the_requested_threshold(repo) -> None:
    import json

    root = json.loads(repo.root_bytes())
    assert root["signed"]["roles"]["root"]["threshold"] == 2 and len(root["signatures"]) == 3


def test_device_follows_a_root_rotation(repo, tuf_keys, make_client) -> None:
    make_client().refresh()
    new = [generate_key() for _ in range(2)]
    assert rotate_root(repo, tuf_keys.root[:2], new, 2) == 2
    client = make_client()  # still bootstraps from the pinned v1
    client.refresh()
    assert (client.metadata_dir / "root_history" / "2.root.json").exists()


def test_rotation_without_a_threshold_of_old_keys_is_refused(repo, tuf_keys) -> None:
    with pytest.raises(TufRepositoryError, match="rotation refused"):
        rotate_root(repo, tuf_keys.root[:1], [generate_key()], 1)
    assert repo.status()["root"]["version"] == 1
