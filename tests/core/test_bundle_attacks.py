"""One test per attack on, or defect in, a bundle: each is refused with its own
error class (issue 2, item 6)."""

from __future__ import annotations

import datetime as dt
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from support.tamper import edit_manifest, members_of, raw_zip, rewrite, shrink_declared_size

import edgepack as ep
from edgepack import ArchiveLimits, BundleBuilder, Trust, verify_bundle
from edgepack._bundle import write_bundle_members


def test_valid_bundle_verifies(make_bundle: Callable[..., Path], trust: Trust) -> None:
    vb = verify_bundle(make_bundle(), trust)
    assert vb.manifest.name == "tiny" and len(vb.signed_by) == 1


def test_manifest_edited_after_signing_is_bad_signature(make_bundle, trust) -> None:
    path = edit_manifest(make_bundle(), version=99)
    with pytest.raises(ep.BadSignatureError):
        verify_bundle(path, trust)


def test_one_flipped_artifact_byte_is_hash_error(make_bundle, trust) -> None:
    path = make_bundle()
    art = dict(members_of(path))["artifacts/tiny.fp32.onnx"]
    flipped = bytearray(art)
    flipped[len(flipped) // 2] ^= 0x01
    rewrite(path, {"artifacts/tiny.fp32.onnx": bytes(flipped)})
    with pytest.raises(ep.ArtifactHashError):
        verify_bundle(path, trust)


def test_artifact_swapped_for_another_valid_model_is_size_error(make_bundle, trust, other_onnx_bytes) -> None:
    import onnx

    onnx.load_from_string(other_onnx_bytes)  # the replacement really is a valid model
    path = rewrite(make_bundle(), {"artifacts/tiny.fp32.onnx": other_onnx_bytes})
    with pytest.raises(ep.ArtifactSizeError):
        verify_bundle(path, trust)


def test_same_size_swap_is_hash_error(make_bundle, trust, onnx_bytes) -> None:
    from support.models import tiny_onnx_model

    other = tiny_onnx_model(seed=7)  # same shapes, other weights: same size, other bytes
    assert len(other) == len(onnx_bytes) and other != onnx_bytes
    path = rewrite(make_bundle(), {"artifacts/tiny.fp32.onnx": other})
    with pytest.raises(ep.ArtifactHashError):
        verify_bundle(path, trust)


def test_signature_from_untrusted_key_is_refused(make_bundle, trust, release_keys) -> None:
    path = make_bundle(keys=[release_keys[2]])
    with pytest.raises(ep.UntrustedKeyError):
        verify_bundle(path, trust)


def test_signatures_below_threshold_are_refused(make_bundle, release_keys) -> None:
    two_of_two = Trust.of([k.public for k in release_keys[:2]], threshold=2)
    with pytest.raises(ep.ThresholdError):
        verify_bundle(make_bundle(keys=[release_keys[0]]), two_of_two)
    assert verify_bundle(make_bundle(keys=release_keys[:2]), two_of_two).signed_by


def test_one_key_signing_twice_does_not_meet_a_threshold_of_two(make_bundle, release_keys) -> None:
    from edgepack._signing import Signature

    path = make_bundle(keys=[release_keys[0]])
    sigs = dict(members_of(path))["signatures.json"]
    import json

    doc = json.loads(sigs)
    doc["signatures"].append(dict(doc["signatures"][0]))
    rewrite(path, {"signatures.json": ep.canonical_bytes(doc)})
    two = Trust.of([k.public for k in release_keys[:2]], threshold=2)
    with pytest.raises(ep.ThresholdError):
        verify_bundle(path, two)
    assert Signature.from_dict(doc["signatures"][0]).keyid == release_keys[0].keyid


def test_unsigned_bundle_is_refused(make_bundle, trust) -> None:
    with pytest.raises(ep.UnsignedError):
        verify_bundle(make_bundle(keys=[]), trust)


def test_expired_bundle_is_refused(make_bundle, trust) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    path = make_bundle(created_at=past, expires_in=dt.timedelta(days=1))
    with pytest.raises(ep.ExpiredError):
        verify_bundle(path, trust)


@pytest.mark.parametrize("keep", [0, 10, 100, -22, -1])
def test_truncated_archive_is_corrupt(make_bundle, trust, keep: int) -> None:
    path = make_bundle()
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(ep.CorruptArchiveError):
        verify_bundle(path, trust)


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "artifacts/../../x", "C:/x", "a\\..\\b"])
def test_member_path_traversal_is_refused(tmp_path, trust, name: str) -> None:
    path = raw_zip(tmp_path / "evil.edgepack", [("manifest.json", b"{}"), (name, b"pwned")])
    with pytest.raises(ep.PathTraversalError):
        verify_bundle(path, trust)


def test_duplicate_member_name_is_refused(tmp_path, trust) -> None:
    path = raw_zip(tmp_path / "dup.edgepack", [("manifest.json", b"{}"), ("manifest.json", b"{}")])
    with pytest.raises(ep.DuplicateMemberError):
        verify_bundle(path, trust)


def test_member_larger_than_its_declared_size_is_refused(make_bundle, trust) -> None:
    path = shrink_declared_size(make_bundle(), "manifest.json", by=10)
    with pytest.raises(ep.MemberSizeError):
        verify_bundle(path, trust)


def test_deflate_zip_bomb_over_the_limit_is_refused(tmp_path, trust) -> None:
    path = tmp_path / "bomb.edgepack"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", b"{}")
        zf.writestr("artifacts/bomb.onnx", bytes(64 << 20))
    assert path.stat().st_size < 1 << 20  # tiny on disk, 64 MiB inside
    with pytest.raises(ep.ArchiveTooLargeError):
        verify_bundle(path, trust, limits=ArchiveLimits(max_total_bytes=16 << 20))


def test_archive_over_the_size_limit_is_refused(make_bundle, trust) -> None:
    path = make_bundle()
    with pytest.raises(ep.ArchiveTooLargeError):
        verify_bundle(path, trust, limits=ArchiveLimits(max_archive_bytes=path.stat().st_size - 1))


def test_manifest_that_is_not_json_is_a_parse_error(make_bundle, trust) -> None:
    path = rewrite(make_bundle(), {"manifest.json": b"{not json"})
    with pytest.raises(ep.ManifestParseError):
        verify_bundle(path, trust)


def test_manifest_with_duplicate_keys_is_a_parse_error(make_bundle, trust) -> None:
    path = rewrite(make_bundle(), {"manifest.json": b'{"name":"a","name":"b"}'})
    with pytest.raises(ep.ManifestParseError):
        verify_bundle(path, trust)


@pytest.mark.parametrize("missing", ["name", "version", "expires_at", "artifacts", "schema"])
def test_signed_manifest_missing_a_required_field_is_a_schema_error(tmp_path, trust, release_keys, missing) -> None:
    b = BundleBuilder("tiny", 1)
    b.add_artifact("a.onnx", b"abc", format="onnx", precision="fp32")
    doc = b.manifest().to_dict()
    del doc[missing]
    path = write_bundle_members(tmp_path / "m.edgepack", doc, {"artifacts/a.onnx": b"abc"}, release_keys[:1])
    with pytest.raises(ep.ManifestSchemaError):
        verify_bundle(path, trust)


def test_member_not_vouched_for_by_the_manifest_is_refused(make_bundle, trust) -> None:
    path = rewrite(make_bundle(), extra=[("artifacts/smuggled.onnx", b"payload")])
    with pytest.raises(ep.BundleError, match="not listed in the manifest"):
        verify_bundle(path, trust)


def test_every_attack_error_is_its_own_class() -> None:
    classes = [ep.BadSignatureError, ep.ArtifactHashError, ep.ArtifactSizeError, ep.UntrustedKeyError,
               ep.ThresholdError, ep.ExpiredError, ep.CorruptArchiveError, ep.PathTraversalError,
               ep.DuplicateMemberError, ep.MemberSizeError, ep.ArchiveTooLargeError, ep.ManifestParseError,
               ep.ManifestSchemaError]
    assert len(set(classes)) == len(classes)
    for a in classes:
        for b in classes:
            assert a is b or not issubclass(a, b)
