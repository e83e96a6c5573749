"""Validation of device updates before they are folded; rejections come back as data.

Checks run cheapest-and-most-fundamental first, and nothing past the envelope
is parsed before the device's signature is checked (ARCHITECTURE "verification
comes before execution"):

1. framing and envelope (``malformed``)
2. known device, signature by *that device's* key (``unknown_device``, ``bad_signature``)
3. round id, base version, codec the round asked for (``wrong_round``, ``wrong_base_version``, ``wrong_codec``)
4. replay: an update id or device already counted in this round (``replay``, ``duplicate_device``)
5. payload hash, tensor names, shapes and dtypes vs the base model (``malformed``, ``shape_mismatch``)
6. every value finite (``non_finite``)
7. sample count plausible (``implausible_samples``)
8. L2 norm within the bound: reject, or clip (``norm_exceeded``)

Outliers need the running mean, so they are checked when folding
(:func:`fold_update`), reason ``outlier``.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .._errors import BadSignatureError, UntrustedKeyError
from .._keys import PublicKey
from . import _kernels
from ._aggregate import RoundAccumulator, l2_norm
from ._errors import DeviceUpdateFormatError, FederatedConfigError, UpdateShapeError
from ._params import Params, ParamSpec
from ._robust import OutlierVerdict, clip_scale, flag_outlier_by_stats
from ._update import UpdateHeader, UpdateLimits, open_update

__all__ = ["REASONS", "AcceptedUpdate", "FoldResult", "Rejection", "RoundContext", "ValidationPolicy",
           "fold_update", "validate_update", "validate_updates"]

REASONS: dict[str, str] = {
    "malformed": "the blob, its header or its tensors do not parse",
    "unknown_device": "the device id is not enrolled",
    "bad_signature": "not signed by the claimed device's key, or altered after signing",
    "wrong_round": "signed for another round",
    "wrong_base_version": "trained from another base model version",
    "wrong_codec": "compressed with a codec the round did not ask for",
    "replay": "this update id was already counted",
    "duplicate_device": "this device already has an update in the round",
    "shape_mismatch": "tensor names, shapes or dtypes differ from the base model",
    "non_finite": "a value is NaN or infinite",
    "implausible_samples": "the sample count is outside the policy's bounds",
    "norm_exceeded": "the L2 norm is over the policy's bound",
    "outlier": "far from the running mean of this round's updates",
}
"""Every rejection reason, with the text the dashboard shows."""


@dataclass(frozen=True)
class RoundContext:
    """What an update must be bound to."""

    round_id: str
    base_version: int
    spec: ParamSpec
    codecs: tuple[str, ...] = ("none",)


@dataclass(frozen=True)
class ValidationPolicy:
    """Bounds for accepting an update. ``max_norm=None`` means no norm bound."""

    max_norm: float | None = None
    on_norm_exceeded: Literal["reject", "clip"] = "reject"
    min_samples: int = 1
    max_samples: int = 1_000_000
    outlier_z: float | None = None  # None: do not check outliers
    outlier_warmup: int = 5
    reject_outliers: bool = False  # False: fold them but flag them
    limits: UpdateLimits = field(default_factory=UpdateLimits)

    def __post_init__(self) -> None:
        if self.max_norm is not None and not self.max_norm > 0:
            raise FederatedConfigError(f"max_norm must be > 0, got {self.max_norm}", where="max_norm")
        if self.on_norm_exceeded not in ("reject", "clip"):
            raise FederatedConfigError("on_norm_exceeded must be 'reject' or 'clip'", where="on_norm_exceeded")
        if not 0 < self.min_samples <= self.max_samples:
            raise FederatedConfigError("need 0 < min_samples <= max_samples", where="min_samples")


@dataclass(frozen=True)
class Rejection:
    """A refused update, with a reason from :data:`REASONS` and a detail line."""

    reason: str
    detail: str
    device_id: str | None = None
    update_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "detail": self.detail, "device_id": self.device_id,
                "update_id": self.update_id, "description": REASONS[self.reason]}


@dataclass(frozen=True)
class AcceptedUpdate:
    """A verified, decoded update with its norm and the scale to fold it with (below 1 if clipped)."""

    header: UpdateHeader
    params: Params
    norm: float
    scale: float

    @property
    def update_id(self) -> str:
        return self.header.update_id

    @property
    def device_id(self) -> str:
        return self.header.device_id


def validate_update(blob: bytes, ctx: RoundContext, device_keys: Mapping[str, PublicKey],
                    policy: ValidationPolicy | None = None, *, seen_update_ids: Container[str] = (),
                    seen_devices: Container[str] = ()) -> AcceptedUpdate | Rejection:
    """Run every check on one blob; return the decoded update or why it was refused.

    ``seen_update_ids`` is anything with ``in``: a set, or the round's
    ``RoundAccumulator`` itself (its ids are on disk, not copied into memory).
    """
    pol = policy or ValidationPolicy()
    try:
        opened = open_update(blob, pol.limits)
    except DeviceUpdateFormatError as e:
        return Rejection("malformed", e.one_line())
    dev, uid = opened.claimed_device_id, opened.claimed_update_id
    key = device_keys.get(dev) if dev is not None else None
    if key is None:
        return Rejection("unknown_device", f"device {dev!r} is not enrolled", dev, uid)
    try:
        verified = opened.verify(key)
    except (BadSignatureError, UntrustedKeyError) as e:
        return Rejection("bad_signature", e.one_line(), dev, uid)
    except DeviceUpdateFormatError as e:
        return Rejection("malformed", e.one_line(), dev, uid)
    h = verified.header
    rej = _check_binding(h, ctx, seen_update_ids, seen_devices)
    if rej is not None:
        return rej
    try:
        params = verified.decode(ctx.spec)
    except UpdateShapeError as e:
        return Rejection("shape_mismatch", e.one_line(), dev, uid)
    except DeviceUpdateFormatError as e:
        return Rejection("malformed", e.one_line(), dev, uid)
    return _check_values(h, params, pol)


def _check_binding(h: UpdateHeader, ctx: RoundContext, seen_ids: Container[str], seen_devs: Container[str]
                   ) -> Rejection | None:
    def rej(reason: str, detail: str) -> Rejection:
        return Rejection(reason, detail, h.device_id, h.update_id)

    if h.round_id != ctx.round_id:
        return rej("wrong_round", f"update is for round {h.round_id!r}, this is {ctx.round_id!r}")
    if h.base_version != ctx.base_version:
        return rej("wrong_base_version", f"update is from base version {h.base_version}, round is on {ctx.base_version}")
    bad = sorted({t.codec for t in h.tensors} - set(ctx.codecs))
    if bad:
        return rej("wrong_codec", f"codec(s) {bad} not in the round's {list(ctx.codecs)}")
    if h.update_id in seen_ids:
        return rej("replay", f"update {h.update_id} was already counted in this round")
    if h.device_id in seen_devs:
        return rej("duplicate_device", f"device {h.device_id} already has an update in this round")
    return None


def _check_values(h: UpdateHeader, params: Params, pol: ValidationPolicy) -> AcceptedUpdate | Rejection:
    for name, a in params.items():
        if not _kernels.all_finite(_kernels.flat_view(a)):
            return Rejection("non_finite", f"tensor {name!r} holds NaN or Inf", h.device_id, h.update_id)
    if not pol.min_samples <= h.num_samples <= pol.max_samples:
        return Rejection("implausible_samples",
                         f"num_samples {h.num_samples} outside [{pol.min_samples}, {pol.max_samples}]",
                         h.device_id, h.update_id)
    norm = l2_norm(params)
    scale = 1.0
    if pol.max_norm is not None and norm > pol.max_norm:
        if pol.on_norm_exceeded == "reject":
            return Rejection("norm_exceeded", f"L2 norm {norm:.6g} > bound {pol.max_norm:.6g}",
                             h.device_id, h.update_id)
        scale = clip_scale(norm, pol.max_norm)
    return AcceptedUpdate(h, params, norm, scale)


def validate_updates(blobs: Iterable[bytes], ctx: RoundContext, device_keys: Mapping[str, PublicKey],
                     policy: ValidationPolicy | None = None, *, seen_update_ids: Iterable[str] = (),
                     seen_devices: Iterable[str] = ()) -> tuple[list[AcceptedUpdate], list[Rejection]]:
    """Validate a batch; replays *within* the batch are caught too (first one wins)."""
    ids, devs = set(seen_update_ids), set(seen_devices)
    accepted: list[AcceptedUpdate] = []
    rejected: list[Rejection] = []
    for blob in blobs:
        r = validate_update(blob, ctx, device_keys, policy, seen_update_ids=ids, seen_devices=devs)
        if isinstance(r, Rejection):
            rejected.append(r)
        else:
            accepted.append(r)
            ids.add(r.update_id)
            devs.add(r.device_id)
    return accepted, rejected


@dataclass(frozen=True)
class FoldResult:
    folded: bool
    verdict: OutlierVerdict | None = None
    rejection: Rejection | None = None


def fold_update(acc: RoundAccumulator, update: AcceptedUpdate, policy: ValidationPolicy | None = None,
                *, weight: float | None = None) -> FoldResult:
    """Fold a validated update (weight = its sample count unless given), checking it for being an outlier.

    A replayed update id (already in ``acc``) is refused with reason ``replay``.
    """
    pol = policy or ValidationPolicy()
    if update.update_id in acc:
        return FoldResult(False, None, Rejection("replay", "update already folded", update.device_id, update.update_id))
    verdict = None
    distance = None
    if pol.outlier_z is not None:
        distance = acc.distance_to_mean(update.params)
        if distance is not None:
            n, mean, std = acc.distance_stats()
            verdict = flag_outlier_by_stats(distance, n, mean, std, z=pol.outlier_z, warmup=pol.outlier_warmup)
            if verdict.flagged and pol.reject_outliers:
                detail = f"distance {distance:.6g} from the running mean > threshold {verdict.threshold:.6g}"
                return FoldResult(False, verdict, Rejection("outlier", detail, update.device_id, update.update_id))
    w = float(update.header.num_samples) if weight is None else weight
    folded = acc.fold(update.update_id, update.params, w, scale=update.scale, distance=distance, norm=update.norm)
    return FoldResult(folded, verdict)


