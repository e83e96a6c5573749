"""Bundle format v1: round trips, unknown fields, interop, atomic writes and
the order of checks."""

from __future__ import annotations

import datetime as dt
import json
import zipfile

import pytest
from support.tamper import edit_manifest, members_of, rewrite

import edgepack as ep
from edgepack import Manifest, verify_bundle
from edgepack._archive import write_archive
from edgepack._bundle import write_bundle_members


def test_builder_fills_hashes_and_sizes(make_bundle, trust, onnx_bytes) -> None:
    vb = verify_bundle(make_bundle(), trust, keep_members=True)
    art = vb.manifest.artifacts[0]
    assert art.size == len(onnx_bytes) and art.sha256 == ep._bundle.sha256_hex(onnx_bytes)
    assert vb.member(art.path) == onnx_bytes


def test_unknown_fields_survive_a_manifest_round_trip() -> None:
    b = ep.BundleBuilder("m", 2, extra={"x-future": {"k": [1, 2]}})
    b.add_artifact("m.onnx", b"abc", format="onnx", precision="fp32", accelerator="npu-v9")
    doc = b.manifest().to_dict()
    back = Manifest.from_dict(json.loads(json.dumps(doc)))
    assert back.to_dict() == doc
    assert back.unrecognized == {"x-future": {"k": [1, 2]}}
    assert back.artifacts[0].unrecognized == {"accelerator": "npu-v9"}


def test_unknown_fields_survive_signing_and_stay_signed(tmp_path, release_keys) -> None:
    b = ep.BundleBuilder("m", 1, extra={"x-future": True})
    b.add_artifact("m.onnx", b"abc", format="onnx", precision="fp32")
    path = b.write(tmp_path / "m.edgepack", [release_keys[0]])
    ep.sign_bundle(path, release_keys[1])
    two = ep.Trust.of([k.public for k in release_keys[:2]], threshold=2)
    vb = verify_bundle(path, two)
    assert vb.manifest.unrecognized == {"x-future": True} and len(vb.signed_by) == 2


def test_bundle_is_a_plain_zip_that_other_tools_read(make_bundle) -> None:
    with zipfile.ZipFile(make_bundle()) as zf:
        assert zf.testzip() is None
        assert zf.namelist()[:2] == ["manifest.json", "signatures.json"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


def test_same_inputs_give_byte_identical_bundles(tmp_path, onnx_bytes, release_keys) -> None:
    when = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    paths = []
    for i in range(2):
        b = ep.BundleBuilder("m", 1, created_at=when)
        b.add_artifact("m.onnx", onnx_bytes, format="onnx", precision="fp32")
        paths.append(b.write(tmp_path / f"{i}.edgepack", [release_keys[0]]))
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_a_failed_write_leaves_nothing_behind(tmp_path) -> None:
    def members():
        yield "manifest.json", b"{}"
        raise RuntimeError("disk full")

    out = tmp_path / "x.edgepack"
    with pytest.raises(RuntimeError):
        write_archive(out, members())
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_previous_bundle(tmp_path, make_bundle, trust) -> None:
    path = make_bundle()
    before = path.read_bytes()

    def members():
        yield "manifest.json", b"{}"
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_archive(path, members())
    assert path.read_bytes() == before
    verify_bundle(path, trust)


def test_signature_is_checked_before_hashes(make_bundle, trust) -> None:
    path = make_bundle()
    art = dict(members_of(path))["artifacts/tiny.fp32.onnx"]
    rewrite(path, {"artifacts/tiny.fp32.onnx": bytes(len(art))})
    edit_manifest(path, version=5)
    with pytest.raises(ep.BadSignatureError):
        verify_bundle(path, trust)


def test_hashes_are_checked_before_expiry(tmp_path, make_bundle, trust) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    path = make_bundle(created_at=past, expires_in=dt.timedelta(days=1))
    art = dict(members_of(path))["artifacts/tiny.fp32.onnx"]
    rewrite(path, {"artifacts/tiny.fp32.onnx": bytes(len(art))})
    with pytest.raises(ep.ArtifactHashError):
        verify_bundle(path, trust)


def test_sign_refuses_a_bundle_whose_artifact_changed(make_bundle, release_keys) -> None:
    path = make_bundle(keys=[])
    art = dict(members_of(path))["artifacts/tiny.fp32.onnx"]
    rewrite(path, {"artifacts/tiny.fp32.onnx": bytes(len(art))})
    with pytest.raises(ep.ArtifactHashError):
        ep.sign_bundle(path, release_keys[0])


@pytest.mark.parametrize("field,value", [("version", -1), ("name", "../evil"), ("expires_at", "tomorrow"),
                                         ("schema", "edgepack.manifest/v9")])
def test_invalid_manifest_values_are_schema_errors(tmp_path, release_keys, trust, field, value) -> None:
    b = ep.BundleBuilder("m", 1)
    b.add_artifact("m.onnx", b"abc", format="onnx", precision="fp32")
    doc = b.manifest().to_dict()
    doc[field] = value
    path = write_bundle_members(tmp_path / "m.edgepack", doc, {"artifacts/m.onnx": b"abc"}, release_keys[:1])
    with pytest.raises(ep.ManifestSchemaError):
        verify_bundle(path, trust)


def test_non_canonical_manifest_encoding_is_refused(make_bundle, trust) -> None:
    path = make_bundle()
    doc = json.loads(dict(members_of(path))["manifest.json"])
    rewrite(path, {"manifest.json": json.dumps(doc, indent=1, sort_keys=True).encode()})
    with pytest.raises(ep.ManifestParseError, match="canonical"):
        verify_bundle(path, trust)
