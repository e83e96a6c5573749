"""Validation before folding: one test per attack or bad input, each giving its reason as data."""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepack import PublicKey, SigningKey, generate_key
from edgepack.federated import (
    REASONS,
    AcceptedUpdate,
    ParamSpec,
    Rejection,
    RoundAccumulator,
    RoundContext,
    ValidationPolicy,
    fold_update,
    open_update,
    validate_update,
    validate_updates,
)
from edgepack.federated._update import MAGIC

TESTED_REASONS: set[str] = set()


def reject(blob: bytes, ctx: RoundContext, registry: dict[str, PublicKey], reason: str,
           policy: ValidationPolicy | None = None, **kw: object) -> Rejection:
    r = validate_update(blob, ctx, registry, policy, **kw)  # type: ignore[arg-type]
    assert isinstance(r, Rejection), f"expected a {reason} rejection, got an accepted update"
    assert r.reason == reason, r
    assert r.to_dict()["description"] == REASONS[reason]
    TESTED_REASONS.add(reason)
    return r


def test_a_good_update_is_accepted_and_decoded(make_update: Callable, ctx: RoundContext,
                                               registry: dict[str, PublicKey], spec: ParamSpec,
                                               rng: np.random.Generator, make_params: Callable) -> None:
    p = make_params(rng, spec, 0.01)
    r = validate_update(make_update(params=p, num_samples=77), ctx, registry)
    assert isinstance(r, AcceptedUpdate)
    assert r.device_id == "dev-0" and r.header.num_samples == 77 and r.scale == 1.0
    for k in p:
        np.testing.assert_array_equal(r.params[k], p[k])


def test_update_for_another_round_is_rejected(make_update, ctx, registry) -> None:
    reject(make_update(round_id="round-6"), ctx, registry, "wrong_round")


def test_update_from_another_base_version_is_rejected(make_update, ctx, registry) -> None:
    reject(make_update(base_version=2), ctx, registry, "wrong_base_version")


def test_header_edited_after_signing_is_rejected(make_update, ctx, registry) -> None:
    blob = make_update(num_samples=50)
    tampered = blob.replace(b'"num_samples":50', b'"num_samples":90')
    assert tampered != blob
    reject(tampered, ctx, registry, "bad_signature")


def test_payload_edited_after_signing_is_rejected(make_update, ctx, registry) -> None:
    blob = bytearray(make_update())
    blob[-3] ^= 0xFF
    r = reject(bytes(blob), ctx, registry, "malformed")
    assert "sha256" in r.detail


def test_update_signed_with_another_devices_key_is_rejected(make_update, ctx, registry,
                                                            device_keys: dict[str, SigningKey]) -> None:
    # dev-1 (a real, enrolled device) tries to submit as dev-0.
    reject(make_update("dev-0", key=device_keys["dev-1"]), ctx, registry, "bad_signature")


def test_update_signed_with_an_unenrolled_key_is_rejected(make_update, ctx, registry) -> None:
    reject(make_update("dev-0", key=generate_key()), ctx, registry, "bad_signature")


def test_update_from_an_unknown_device_is_rejected(make_update, ctx, registry) -> None:
    blob = make_update("dev-0")
    reject(blob, ctx, {k: v for k, v in registry.items() if k != "dev-0"}, "unknown_device")


@pytest.mark.parametrize("change", ["shape", "dtype", "missing", "renamed"])
def test_update_that_does_not_fit_the_base_model_is_rejected(change: str, make_update, ctx, registry,
                                                             spec: ParamSpec, rng, make_params) -> None:
    p = make_params(rng, spec)
    if change == "shape":
        p["dense.bias"] = np.zeros(4, np.float32)
    elif change == "dtype":
        p["dense.bias"] = p["dense.bias"].astype(np.float64)
    elif change == "missing":
        del p["head.weight"]
    else:
        p["head.w"] = p.pop("head.weight")
    reject(make_update(params=p), ctx, registry, "shape_mismatch")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_update_with_non_finite_values_is_rejected(bad: float, make_update, ctx, registry, spec, rng,
                                                   make_params) -> None:
    p = make_params(rng, spec, 0.01)
    p["dense.weight"][100, 7] = bad
    reject(make_update(params=p), ctx, registry, "non_finite")


@pytest.mark.parametrize("n", [0, -5, 10_000_001])
def test_implausible_sample_count_is_rejected(n: int, make_update, ctx, registry) -> None:
    reject(make_update(num_samples=n), ctx, registry, "implausible_samples",
           ValidationPolicy(max_samples=10_000_000))


def test_norm_over_the_bound_is_rejected_under_reject_policy(make_update, ctx, registry, spec, rng,
                                                             make_params) -> None:
    p = make_params(rng, spec)  # norm ~ 256
    r = reject(make_update(params=p), ctx, registry, "norm_exceeded", ValidationPolicy(max_norm=10.0))
    assert "> bound 10" in r.detail


def test_norm_over_the_bound_is_clipped_under_clip_policy(make_update, ctx, registry, spec, rng,
                                                          make_params) -> None:
    p = make_params(rng, spec)
    norm = np.sqrt(sum((v.astype(np.float64) ** 2).sum() for v in p.values()))
    r = validate_update(make_update(params=p, num_samples=4), ctx, registry,
                        ValidationPolicy(max_norm=10.0, on_norm_exceeded="clip"))
    assert isinstance(r, AcceptedUpdate) and r.scale == pytest.approx(10.0 / norm)
    acc = RoundAccumulator(spec)
    fold_update(acc, r)
    got = acc.mean()
    for k in p:  # weighted mean of one update = the update scaled to norm 10
        np.testing.assert_allclose(got[k], (p[k].astype(np.float64) * 10.0 / norm).astype(np.float32), rtol=1e-6)


def test_replayed_update_is_rejected(make_update, ctx, registry, spec) -> None:
    blob = make_update()
    accepted, rejected = validate_updates([blob, blob], ctx, registry)
    assert len(accepted) == 1 and [r.reason for r in rejected] == ["replay"]
    reject(blob, ctx, registry, "replay", seen_update_ids={accepted[0].update_id})
    acc = RoundAccumulator(spec)
    assert fold_update(acc, accepted[0]).folded
    again = fold_update(acc, accepted[0])
    assert not again.folded and again.rejection is not None and again.rejection.reason == "replay"
    assert acc.count == 1


def test_second_update_from_the_same_device_is_rejected(make_update, ctx, registry) -> None:
    accepted, rejected = validate_updates([make_update("dev-2"), make_update("dev-2")], ctx, registry)
    assert len(accepted) == 1 and [r.reason for r in rejected] == ["duplicate_device"]
    TESTED_REASONS.add("duplicate_device")


def test_codec_the_round_did_not_ask_for_is_rejected(make_update, spec, registry) -> None:
    ctx = RoundContext("round-7", 3, spec, codecs=("int8",))
    reject(make_update(codec="topk"), ctx, registry, "wrong_codec")


@pytest.mark.parametrize("damage", ["bad_magic", "huge_envelope_length", "truncated", "not_json", "empty"])
def test_malformed_blob_is_rejected_without_trusting_its_sizes(damage: str, make_update, ctx, registry) -> None:
    blob = make_update()
    if damage == "bad_magic":
        blob = b"X" + blob[1:]
    elif damage == "huge_envelope_length":
        blob = MAGIC + struct.pack("<I", 0xFFFFFFFF) + blob[12:]
    elif damage == "truncated":
        blob = blob[:40]
    elif damage == "not_json":
        blob = MAGIC + struct.pack("<I", 5) + b"{{{{{"
    else:
        blob = b""
    reject(blob, ctx, registry, "malformed")


def test_outlier_is_flagged_or_rejected_by_policy(make_update, ctx, registry, spec, rng, make_params,
                                                  device_keys) -> None:
    base = make_params(rng, spec, 0.01)
    # The first fold has no running mean to measure against, so 3 folds give 2 distances.
    policy = ValidationPolicy(outlier_z=3.0, outlier_warmup=2, reject_outliers=True)
    acc = RoundAccumulator(spec)
    for i in range(3):
        near = {k: v + make_params(rng, spec, 0.001)[k] for k, v in base.items()}
        u = validate_update(make_update(f"dev-{i}", params=near), ctx, registry)
        assert isinstance(u, AcceptedUpdate) and fold_update(acc, u, policy).folded
    far = {k: v + 1.0 for k, v in base.items()}
    u = validate_update(make_update("dev-3", params=far), ctx, registry)
    assert isinstance(u, AcceptedUpdate)
    res = fold_update(acc, u, policy)
    assert not res.folded and res.rejection is not None and res.rejection.reason == "outlier"
    assert res.verdict is not None and res.verdict.flagged
    TESTED_REASONS.add("outlier")
    flag_only = fold_update(acc, u, ValidationPolicy(outlier_z=3.0, outlier_warmup=2))
    assert flag_only.folded and flag_only.verdict is not None and flag_only.verdict.flagged


def test_unknown_header_fields_survive_a_round_trip(make_update) -> None:
    from edgepack.federated import UpdateHeader
    h = UpdateHeader.from_dict(open_update(make_update()).signed)
    d = dict(h.to_dict(), future_field={"x": 1})
    assert UpdateHeader.from_dict(d).to_dict()["future_field"] == {"x": 1}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_corruption_is_always_a_rejection_never_a_crash(data: st.DataObject, make_update, ctx,
                                                               registry) -> None:
    blob = bytearray(make_update())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    r = validate_update(bytes(blob[:cut]) if data.draw(st.booleans()) else bytes(blob), ctx, registry)
    assert isinstance(r, (Rejection, AcceptedUpdate))


def test_every_reason_has_a_test() -> None:
    # Runs last in this module (pytest keeps file order); each reject() above records its reason.
    assert set(REASONS) == TESTED_REASONS, set(REASONS) - TESTED_REASONS
