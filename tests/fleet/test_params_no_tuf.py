"""A fleet without a TUF repository cannot deliver parameter updates (they are signed
by the federated TUF role): the upload is refused with a typed JSON error and nothing
is stored. The full path with TUF is tested end to end in tests/agent/test_params_api.py."""

from __future__ import annotations


def test_param_upload_without_tuf_is_refused_with_a_typed_error(admin, make_bundle, fleet) -> None:
    rel = admin.upload(make_bundle(1)).json
    before = admin.get("/releases").json["releases"]
    r = admin.client.post(f"/api/v1/admin/releases/{rel['id']}/params", data=b"EPPU1\n....",
                          headers=admin.headers, content_type="application/octet-stream")
    assert r.status_code == 409, r.json
    assert r.json["error"] == "ParamsDeliveryUnavailableError" and "TUF" in r.json["message"]
    assert admin.get("/releases").json["releases"] == before
    assert fleet.publisher.kind == "storage"
