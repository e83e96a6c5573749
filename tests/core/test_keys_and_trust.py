"""Key files and trust files: permissions, encryption, rotation."""

from __future__ import annotations

import stat

import pytest

import edgepack as ep
from edgepack import Trust, generate_key, load_public_key, load_signing_key, save_key_pair


def test_private_key_file_is_0600_and_round_trips(tmp_path) -> None:
    key = generate_key()
    priv, pub = save_key_pair(key, tmp_path, "release")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert load_signing_key(priv).keyid == key.keyid == load_public_key(pub).keyid
    assert b"PRIVATE" not in pub.read_bytes()


def test_encrypted_key_needs_the_right_passphrase(tmp_path, monkeypatch) -> None:
    key = generate_key()
    priv, _ = save_key_pair(key, tmp_path, "enc", passphrase=b"correct horse")
    assert b"ENCRYPTED" in priv.read_bytes()
    monkeypatch.delenv(ep._keys.PASSPHRASE_ENV, raising=False)
    with pytest.raises(ep.KeyFileError, match="no passphrase"):
        load_signing_key(priv)
    monkeypatch.setenv(ep._keys.PASSPHRASE_ENV, "wrong")
    with pytest.raises(ep.KeyFileError, match="decrypt"):
        load_signing_key(priv)
    monkeypatch.setenv(ep._keys.PASSPHRASE_ENV, "correct horse")
    assert load_signing_key(priv).keyid == key.keyid


def test_world_readable_private_key_is_refused(tmp_path) -> None:
    priv, _ = save_key_pair(generate_key(), tmp_path, "k")
    priv.chmod(0o644)
    with pytest.raises(ep.KeyFileError, match="chmod 600"):
        load_signing_key(priv)


def test_keys_are_never_overwritten(tmp_path) -> None:
    save_key_pair(generate_key(), tmp_path, "k")
    before = (tmp_path / "k.key").read_bytes()
    with pytest.raises(ep.KeyFileError, match="already exists"):
        save_key_pair(generate_key(), tmp_path, "k")
    assert (tmp_path / "k.key").read_bytes() == before


def test_signing_key_repr_hides_key_material() -> None:
    key = generate_key()
    pem = key.private_pem().decode()
    body = "".join(pem.splitlines()[1:-1])
    assert body not in repr(key) and key.keyid[:12] in repr(key)


def test_trust_file_round_trips_and_keeps_unknown_fields(tmp_path) -> None:
    keys = [generate_key() for _ in range(2)]
    t = Trust.of([k.public for k in keys], threshold=2)
    t.unrecognized["x-future"] = {"a": 1}
    t.save(tmp_path / "trust.json")
    back = ep.load_trust(tmp_path / "trust.json")
    assert back.threshold == 2 and set(back.keys) == {k.keyid for k in keys}
    assert back.to_dict() == t.to_dict()


@pytest.mark.parametrize("threshold", [0, 3])
def test_trust_threshold_must_be_reachable(threshold: int) -> None:
    keys = [generate_key().public for _ in range(2)]
    with pytest.raises(ep.TrustError):
        Trust.of(keys, threshold=threshold)


def test_trust_rotation_needs_old_and_new_thresholds() -> None:
    old_keys = [generate_key() for _ in range(2)]
    new_keys = [generate_key() for _ in range(2)]
    old = Trust.of([k.public for k in old_keys], threshold=2)
    new = Trust.of([k.public for k in new_keys], threshold=1, version=2)
    new.sign(new_keys[0])
    new.sign(old_keys[0])
    with pytest.raises(ep.TrustError, match="rotation refused"):
        old.rotate_to(new)  # only one of the two old keys signed
    new.sign(old_keys[1])
    assert old.rotate_to(new) is new
    skipped = Trust.of([k.public for k in new_keys], version=3)
    with pytest.raises(ep.TrustError, match="version"):
        old.rotate_to(skipped)
