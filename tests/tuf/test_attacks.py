"""One test per TUF attack, each through a real HTTP server and python-tuf's
``ngclient`` on the device side (TUF spec, section 1.5.2 "Goals to protect
against specific attacks")."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from tuf.api.metadata import TargetFile

from edgepack import generate_key
from fleet_server._tuf import FEDERATED_ROLE, TufConfig, TufRepository, group_role
from fleet_server._tuf_signer import EdgepackSigner
from runtime.agent._errors import (
    EndlessDataError,
    TargetMismatchError,
    TargetNotTrustedError,
    TufVerificationError,
)

from .conftest import forge

BUNDLE = b"pretend bundle bytes " * 5000


def test_device_downloads_a_published_target_and_its_hash_matches(repo, make_client) -> None:
    info = repo.publish_target("default", "tiny-1.edgepack", BUNDLE, {"version": 1})
    client = make_client()
    client.refresh()
    got = client.require_target("groups/default/tiny-1.edgepack")
    assert got.hashes == info.hashes and got.custom == {"version": 1}
    result = client.download(got)
    assert result.path.read_bytes() == BUNDLE and result.bytes_received == len(BUNDLE)


def test_rollback_attack_old_timestamp_is_refused(repo, make_client, served) -> None:
    old_timestamp = repo.metadata_bytes("timestamp.json")
    repo.publish_target("default", "tiny-2.edgepack", BUNDLE)
    make_client().refresh()  # the device has now seen the newer timestamp
    served[1].replace["metadata/timestamp.json"] = old_timestamp
    with pytest.raises(TufVerificationError, match="BadVersionNumberError"):
        make_client().refresh()


def test_rollback_attack_old_group_targets_under_new_version_is_refused(repo, make_client, served) -> None:
    repo.publish_target("default", "tiny-1.edgepack", BUNDLE)
    old = repo.metadata_bytes(f"{group_role('default')}.json")
    repo.publish_target("default", "tiny-2.edgepack", BUNDLE + b"2")
    version = repo.status()[group_role("default")]["version"]
    served[1].replace[f"metadata/{version}.{group_role('default')}.json"] = old
    client = make_client()
    client.refresh()
    # Refused by the length the snapshot signs, before the version is even read.
    with pytest.raises(TufVerificationError, match="length|version"):
        client.target_info("groups/default/tiny-2.edgepack")


def test_freeze_attack_expired_timestamp_is_refused(tmp_path: Path, tuf_keys, make_client) -> None:
    # A mirror that keeps serving yesterday's (validly signed) timestamp: it expires and
    # the device stops trusting the repository instead of believing nothing changed.
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    frozen = TufRepository.create(tmp_path / "frozen", tuf_keys.root, 2, tuf_keys.online,
                                  tuf_keys.federated, now=past)
    from fleet_server._tuf_http import serve_tuf

    server, thread = serve_tuf(frozen)
    try:
        from runtime.agent._tuf_client import TufClient

        client = TufClient(tmp_path / "dev", server.url, frozen.root_bytes(), timeout=5)
        with pytest.raises(TufVerificationError, match="expired"):
            client.refresh()
        # ...and the server's own timer fixes it: refresh_online re-signs the online roles.
        assert "timestamp" in frozen.refresh_online()
        TufClient(tmp_path / "dev", server.url, frozen.root_bytes(), timeout=5).refresh()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_mix_and_match_attack_snapshot_from_another_state_is_refused(repo, make_client, served) -> None:
    repo.publish_target("default", "tiny-1.edgepack", BUNDLE)
    snap_v = repo.status()["snapshot"]["version"]
    older_snapshot = repo.metadata_bytes(f"{snap_v - 1}.snapshot.json")
    # Serve an older, validly signed snapshot where the timestamp names the current one.
    served[1].replace[f"metadata/{snap_v}.snapshot.json"] = older_snapshot
    with pytest.raises(TufVerificationError):
        make_client().refresh()


def test_arbitrary_target_swapped_file_is_refused(repo, make_client) -> None:
    info = repo.publish_target("default", "tiny-1.edgepack", BUNDLE)
    stored = repo.target_file(f"groups/default/{info.hashes['sha256']}.tiny-1.edgepack")
    evil = bytearray(BUNDLE)
    evil[100] ^= 0xFF  # same length, one byte changed
    stored.write_bytes(bytes(evil))
    client = make_client()
    with pytest.raises(TargetMismatchError):
        client.download(client.require_target("groups/default/tiny-1.edgepack"))
    assert not list(client.downloads_dir.glob("*tiny-1*")), "a refused file must not stay on the device"


def test_arbitrary_target_unsigned_path_is_refused(repo, make_client) -> None:
    client = make_client()
    with pytest.raises(TargetNotTrustedError):
        client.require_target("groups/default/evil-9.edgepack")


def test_arbitrary_target_in_metadata_signed_by_unknown_key_is_refused(repo, make_client) -> None:
    evil = TargetFile.from_data("groups/default/evil-9.edgepack", b"evil")
    forge(repo, group_role("default"), EdgepackSigner(generate_key()),
          lambda s: s.targets.__setitem__(evil.path, evil))
    client = make_client()
    client.refresh()
    with pytest.raises(TufVerificationError, match="UnsignedMetadataError"):
        client.target_info("groups/default/evil-9.edgepack")


@pytest.mark.parametrize("role", ["timestamp", "snapshot", "targets"])
def test_endless_data_attack_on_metadata_is_cut_off(repo, make_client, served, role) -> None:
    version = repo.status()[role]["version"]
    served[1].endless.add("metadata/timestamp.json" if role == "timestamp" else f"metadata/{version}.{role}.json")
    with pytest.raises(EndlessDataError):
        make_client().refresh()


def test_endless_data_attack_on_target_is_cut_off(repo, make_client, served) -> None:
    info = repo.publish_target("default", "tiny-1.edgepack", BUNDLE)
    served[1].endless.add(f"targets/groups/default/{info.hashes['sha256']}.tiny-1.edgepack")
    client = make_client()
    with pytest.raises(EndlessDataError):
        client.download(client.require_target("groups/default/tiny-1.edgepack"))
    part_files = list(client.downloads_dir.glob("*.part"))
    assert not part_files or part_files[0].stat().st_size <= len(BUNDLE)


def test_compromised_federated_key_cannot_publish_a_release(repo, tuf_keys, make_client) -> None:
    # The federated key may sign params/*/* only: a bundle path in its role is never
    # consulted, because targets delegates groups/<g>/* to the group roles alone.
    evil = TargetFile.from_data("groups/default/evil-9.edgepack", b"evil")
    forge(repo, FEDERATED_ROLE, EdgepackSigner(tuf_keys.federated),
          lambda s: s.targets.__setitem__(evil.path, evil))
    client = make_client()
    with pytest.raises(TargetNotTrustedError):
        client.require_target("groups/default/evil-9.edgepack")


def test_compromised_federated_key_cannot_sign_a_group_role(repo, tuf_keys, make_client) -> None:
    evil = TargetFile.from_data("groups/default/evil-9.edgepack", b"evil")
    forge(repo, group_role("default"), EdgepackSigner(tuf_keys.federated),
          lambda s: s.targets.__setitem__(evil.path, evil))
    client = make_client()
    with pytest.raises(TufVerificationError, match="UnsignedMetadataError"):
        client.target_info("groups/default/evil-9.edgepack")


def test_federated_key_can_publish_params(repo, make_client) -> None:
    pub = repo.publish_params("tiny", 2, b"\x01" * 4096)
    client = make_client()
    assert client.require_target(pub.target).length == 4096


def test_timestamp_is_resigned_before_it_expires(repo, make_client) -> None:
    cfg = TufConfig()
    before = repo.status()
    now = dt.datetime.now(dt.UTC)
    assert repo.refresh_online(now) == [], "fresh metadata must not be re-signed"
    later = now + cfg.timestamp_lifetime * 0.6
    assert repo.refresh_online(later) == ["timestamp"]
    after = repo.status(later)
    assert after["timestamp"]["version"] == before["timestamp"]["version"] + 1
    assert after["timestamp"]["expires_in_s"] == int(cfg.timestamp_lifetime.total_seconds())
    much_later = now + cfg.snapshot_lifetime * 0.6
    resigned = repo.refresh_online(much_later)
    assert {"snapshot", "timestamp"} <= set(resigned)
    make_client().refresh()
