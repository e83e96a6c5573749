"""Federated rounds on the fleet server: cohort, uploads, deadline, quorum, champion/challenger.

Crash safety (SIGKILL at any instruction) comes from one ordering, inside one
write transaction that also locks the round row (``BEGIN IMMEDIATE`` on SQLite,
``SELECT ... FOR UPDATE`` on PostgreSQL), so uploads are folded one at a time:

1. validate the blob (signature, round id, base version, shapes, norm, ...);
2. fold it into the accumulator loaded from ``rounds/<id>/acc.state`` (and its
   ``acc.state.records`` journal) and ``save`` it (journal commit + fsync, then
   atomic ``os.replace`` + fsync of the sums);
3. insert the ``accepted`` row and commit; only then answer 200.

A kill before 2 loses nothing the device was told about; a kill between 2 and
3 leaves the update in the sums but unacknowledged, and the device's retry of
the same blob finds its update id in the accumulator and only records the row
(never a second fold). The accumulator file is the truth for the quorum and
the average; its ids are unique by construction.
"""

from __future__ import annotations

import base64
import logging
import math
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from edgepack import EdgepackError, PublicKey
from edgepack._params import read_weights
from edgepack.federated import (
    REASONS,
    AccumulatorStateError,
    ParamSpec,
    Rejection,
    RoundAccumulator,
    RoundContext,
    ValidationPolicy,
    fold_update,
    validate_update,
)

from ._errors import BadRequestError, ConflictError, NotFoundError
from ._models import Device, Release
from ._models_rounds import FLRound, FLUpdate

__all__ = ["ROUND_REASONS", "close_round", "create_round", "device_round", "round_dict", "submit_update",
           "tick_rounds"]

ROUND_REASONS: dict[str, str] = {
    **REASONS,
    "late": "arrived after the round's deadline",
    "round_closed": "the round was already closed or failed",
    "not_selected": "the device is not in this round's cohort",
}
"""Every rejection reason a round records, with the text the dashboard shows."""

log = logging.getLogger("fleet_server.rounds")
ELIGIBILITY_KEYS = ("charging", "idle", "wifi")
ROUNDS_DIR = "rounds"


def round_dir(fleet: Any, round_id: str) -> Path:
    return Path(fleet.config.instance_dir) / ROUNDS_DIR / round_id


def _acc_path(fleet: Any, round_id: str) -> Path:
    return round_dir(fleet, round_id) / "acc.state"


def _base_artifacts(fleet: Any, rel: Release) -> dict[str, bytes]:
    """The verified artifacts of a release: a bundle's own, or, for a parameter-update release
    (a promoted round), its bundle's with every update of the chain applied in order, each
    verified against the parameter-update trust and its signed result hashes (as a device does).

    Raises:
        BadRequestError: the chain does not lead back to a bundle, or a link no longer verifies.
    """
    from ._rounds_chain import release_artifacts

    return release_artifacts(fleet, rel)


def _spec_of(doc: dict[str, Any]) -> ParamSpec:
    return ParamSpec.from_dict(doc)


def _global_params(fleet: Any, r: FLRound) -> dict[str, np.ndarray]:
    data = np.load(round_dir(fleet, r.id) / "global.npz")
    return {t.name: data[t.name] for t in _spec_of(r.spec).tensors}


def _policy(doc: dict[str, Any]) -> ValidationPolicy:
    try:
        return ValidationPolicy(**doc)
    except (TypeError, EdgepackError) as e:
        msg = e.one_line() if isinstance(e, EdgepackError) else str(e)
        raise BadRequestError(f"bad validation policy: {msg}", where="policy",
                              hint="fields: max_norm, on_norm_exceeded, min_samples, max_samples, outlier_z") from e


def _eligible(state: dict[str, Any] | None, need: dict[str, bool]) -> bool:
    st = state or {}
    return all(st.get(k) is v for k, v in need.items())


def create_round(fleet: Any, *, model: str, base_version: int, params: list[str], artifact: str | None,
                 fraction: float, min_clients: int, quorum: int | None, deadline_s: float,
                 eligibility: dict[str, bool], codecs: list[str], policy: dict[str, Any],
                 group: str | None = None, evaluation: dict[str, Any] | None = None,
                 rollout: dict[str, Any] | None = None, now: float | None = None) -> dict[str, Any]:
    """Create a round for ``model`` v``base_version`` and pick its cohort.

    ``base_version`` may be a bundle or a parameter release (a promoted round's). With a
    ``rollout`` plan (``{"group", "waves", "gates", "timing"}``, needs ``evaluation``), a
    promoted candidate's release is rolled out automatically (``_rounds_rollout``).

    Raises:
        NotFoundError: no such release.
        BadRequestError: a bad fraction/quorum/deadline/eligibility/policy/rollout plan, unknown weight names,
            or no ONNX artifact.
        ConflictError: fewer eligible devices than ``min_clients``.
    """
    now = time.time() if now is None else now
    if not 0 < fraction <= 1:
        raise BadRequestError("fraction must be in (0, 1]", where="fraction")
    if min_clients < 1 or deadline_s <= 0:
        raise BadRequestError("min_clients must be >= 1 and deadline_s > 0", where="min_clients")
    bad = sorted(set(eligibility) - set(ELIGIBILITY_KEYS))
    if bad or not all(isinstance(v, bool) for v in eligibility.values()):
        raise BadRequestError(f"eligibility keys must be among {ELIGIBILITY_KEYS} with boolean values, got {bad}",
                              where="eligibility")
    _policy(policy)  # refuse a bad policy now, not at the first upload
    q = min_clients if quorum is None else quorum
    if not q >= 1:
        raise BadRequestError("quorum must be >= 1", where="quorum")
    ev = dict(evaluation or {})
    if ev:
        if not isinstance(ev.get("path"), str) or not Path(ev["path"]).is_file():
            raise BadRequestError("evaluation.path must name an .npz file on the server with arrays x and y",
                                  where="evaluation.path")
        ev["threshold"] = float(ev.get("threshold", 0.0))
    if rollout is not None:
        if not ev:
            raise BadRequestError("a rollout plan needs an evaluation set: only a promoted candidate is rolled out",
                                  where="rollout", hint="add evaluation: {path, threshold}")
        from ._rounds_rollout import check_plan

        ev["rollout"] = check_plan(fleet, rollout)
    with fleet.db.read() as s:
        rel = s.scalar(select(Release).where(Release.name == model, Release.version == base_version))
        if rel is None:
            raise NotFoundError(f"no release {model} v{base_version}", where="base_version",
                                hint="upload the base bundle first")
        s.expunge(rel)
        devs = s.execute(select(Device.id, Device.state, Device.group_id).where(Device.status == "active")).all()
        if group is not None:
            from ._models import Group

            gid = s.scalar(select(Group.id).where(Group.name == group))
            if gid is None:
                raise NotFoundError(f"no group {group!r}", where="group")
            devs = [d for d in devs if d.group_id == gid]
    arts = _base_artifacts(fleet, rel)
    onnx = [p for p in arts if p.endswith(".onnx")]
    art = artifact or (onnx[0] if onnx else None)
    if art is None or art not in arts or not art.endswith(".onnx"):
        raise BadRequestError(f"no ONNX artifact {art!r} in the base bundle (has {sorted(arts)})", where="artifact")
    try:
        weights = read_weights("onnx", arts[art], params)
        spec = ParamSpec.from_params({n: weights[n] for n in params})
    except EdgepackError as e:
        raise BadRequestError(f"cannot read weights {params} from {art}: {e.message}", where="params",
                              hint="name float ONNX initializers of the base model") from e
    eligible = sorted(d.id for d in devs if _eligible(d.state, eligibility))
    if len(eligible) < min_clients:
        raise ConflictError(f"{len(eligible)} eligible device(s) (need {min_clients}) with {eligibility}",
                            where="min_clients", hint="lower min_clients or wait for devices to report eligibility")
    n = min(len(eligible), max(min_clients, math.ceil(fraction * len(eligible))))
    selected = sorted(secrets.SystemRandom().sample(eligible, n))
    rid = "r-" + secrets.token_hex(8)
    d = round_dir(fleet, rid)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / "global.tmp.npz"
    np.savez(tmp, **{n_: weights[n_] for n_ in params})
    tmp.replace(d / "global.npz")
    with fleet.db.write() as s:
        r = FLRound(id=rid, model=model, base_version=base_version, base_release_id=rel.id, state="open",
                    artifact=art, spec=spec.to_dict(), selected=selected, quorum=q,
                    cohort={"fraction": fraction, "min_clients": min_clients, "eligibility": eligibility,
                            "eligible": len(eligible), "group": group},
                    codecs=list(codecs), policy=policy, evaluation=ev, deadline_at=now + deadline_s,
                    created_at=now)
        s.add(r)
        s.flush()
        return round_dict(s, r)


def round_dict(s: Any, r: FLRound, *, updates: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": r.id, "model": r.model, "base_version": r.base_version, "state": r.state, "artifact": r.artifact,
        "selected": list(r.selected), "quorum": r.quorum, "cohort": r.cohort, "codecs": r.codecs,
        "policy": r.policy, "deadline_at": r.deadline_at, "created_at": r.created_at, "closed_at": r.closed_at,
        "result": r.result, "reason": r.reason,
        "evaluation": {k: v for k, v in (r.evaluation or {}).items() if k != "path"},
    }
    if updates:
        rows = s.scalars(select(FLUpdate).where(FLUpdate.round_id == r.id).order_by(FLUpdate.id)).all()
        out["accepted"] = [{"device_id": u.device_id, "update_id": u.update_id, "num_samples": u.num_samples,
                            "norm": u.norm, "metrics": u.metrics} for u in rows if u.status == "accepted"]
        out["rejected"] = [{"device_id": u.device_id, "update_id": u.update_id, "reason": u.reason,
                            "detail": u.detail, "description": ROUND_REASONS.get(u.reason or "", "")}
                           for u in rows if u.status == "rejected"]
    return out


def device_round(fleet: Any, device_id: str, now: float | None = None) -> dict[str, Any] | None:
    """The open round this device is selected for and has not answered yet, with the global params."""
    now = time.time() if now is None else now
    with fleet.db.read() as s:
        rounds = s.scalars(select(FLRound).where(FLRound.state == "open").order_by(FLRound.created_at)).all()
        done = set(s.scalars(select(FLUpdate.round_id).where(FLUpdate.device_id == device_id,
                                                             FLUpdate.status == "accepted")).all())
        for r in rounds:
            if device_id in r.selected and r.id not in done and now < r.deadline_at:
                s.expunge(r)
                break
        else:
            return None
    params = _global_params(fleet, r)
    return {"round_id": r.id, "model": r.model, "base_version": r.base_version, "deadline_at": r.deadline_at,
            "codecs": r.codecs, "policy": r.policy, "spec": r.spec, "eligibility": r.cohort.get("eligibility", {}),
            "params": {k: {"shape": list(v.shape), "dtype": str(v.dtype),
                           "data": base64.b64encode(np.ascontiguousarray(v).tobytes()).decode()}
                       for k, v in params.items()}}


def _load_acc(fleet: Any, r: FLRound) -> RoundAccumulator:
    p = _acc_path(fleet, r.id)
    spec = _spec_of(r.spec)
    return RoundAccumulator.load(p, spec) if p.exists() else RoundAccumulator(spec)


def submit_update(fleet: Any, device: Any, round_id: str, blob: bytes,
                  now: float | None = None) -> tuple[int, dict[str, Any]]:
    """Validate and fold one device update; returns (HTTP status, body). Rejections are recorded rows (422).

    Raises:
        NotFoundError: no such round.
        AccumulatorStateError: the round's state file is corrupt (the server refuses rather than guessing).
    """
    now = time.time() if now is None else now
    with fleet.db.write() as s:
        r = s.get(FLRound, round_id, with_for_update=True)
        if r is None:
            raise NotFoundError(f"no round {round_id!r}", where="round_id")

        def reject(reason: str, detail: str, uid: str | None = None) -> tuple[int, dict[str, Any]]:
            s.add(FLUpdate(round_id=r.id, device_id=device.id, update_id=uid, status="rejected", reason=reason,
                           detail=detail, created_at=now))
            return 422, {"accepted": False, "reason": reason, "detail": detail,
                         "description": ROUND_REASONS[reason]}

        if now >= r.deadline_at:
            return reject("late", f"the deadline was {now - r.deadline_at:.1f} s ago")
        if r.state != "open":
            return reject("round_closed", f"round {r.id} is {r.state}")
        if device.id not in r.selected:
            return reject("not_selected", f"device {device.id} is not in the cohort of round {r.id}")
        rows = s.execute(select(FLUpdate.update_id, FLUpdate.device_id).where(
            FLUpdate.round_id == r.id, FLUpdate.status == "accepted")).all()
        spec = _spec_of(r.spec)
        ctx = RoundContext(r.id, r.base_version, spec, tuple(r.codecs))
        pol = _policy(r.policy)
        keys = {device.id: PublicKey(bytes.fromhex(device.public_key))}
        res = validate_update(blob, ctx, keys, pol, seen_update_ids={u for u, _ in rows},
                              seen_devices={d for _, d in rows})
        if isinstance(res, Rejection):
            if res.reason == "replay" and (res.update_id, device.id) in set(rows):
                return 200, {"accepted": True, "already_counted": True, "update_id": res.update_id}
            return reject(res.reason, res.detail, res.update_id)
        acc = _load_acc(fleet, r)
        if res.update_id not in acc:  # else: folded before a crash, never acknowledged; record it only
            fr = fold_update(acc, res, pol)
            if fr.rejection is not None:
                return reject(fr.rejection.reason, fr.rejection.detail, res.update_id)
            acc.save(_acc_path(fleet, r.id))  # durable before the row commits (see module doc)
        s.add(FLUpdate(round_id=r.id, device_id=device.id, update_id=res.update_id, status="accepted",
                       num_samples=res.header.num_samples, norm=res.norm,
                       metrics={k: v for k, v in res.header.metrics.items() if isinstance(v, (int, float))},
                       created_at=now))
        return 200, {"accepted": True, "already_counted": False, "update_id": res.update_id, "count": acc.count}


def close_round(fleet: Any, round_id: str, *, force: bool = False, now: float | None = None) -> dict[str, Any]:
    """Close a round: at its deadline (or now, with ``force``); fails cleanly without quorum.

    Raises:
        NotFoundError: no such round.
        ConflictError: ``force`` on a round that is not open.
    """
    from ._rounds_promote import _finish, _publish

    now = time.time() if now is None else now
    with fleet.db.write() as s:
        r = s.get(FLRound, round_id, with_for_update=True)
        if r is None:
            raise NotFoundError(f"no round {round_id!r}", where="round_id")
        if r.state != "open":
            if "pending" in ((r.result or {}).get("release"), (r.result or {}).get("rollout")):
                pending_only = True
            elif force:
                raise ConflictError(f"round {r.id} is already {r.state}", where="round_id")
            else:
                return round_dict(s, r)
        else:
            pending_only = False
    if pending_only:
        _publish(fleet, round_id)
        with fleet.db.read() as s:
            return round_dict(s, s.get(FLRound, round_id))
    with fleet.db.write() as s:
        r = s.get(FLRound, round_id, with_for_update=True)
        if r.state != "open":
            return round_dict(s, r)
        if not force and now < r.deadline_at:
            return round_dict(s, r)
        try:
            acc = _load_acc(fleet, r)
        except AccumulatorStateError as e:
            r.state, r.reason, r.closed_at = "failed", f"accumulator unreadable: {e.one_line()}", now
            return round_dict(s, r)
        if acc.count < r.quorum:
            r.state, r.closed_at = "failed", now
            r.reason = f"quorum not met: {acc.count} accepted update(s), quorum {r.quorum}"
            r.result = {"accepted": acc.count, "promoted": False}
            return round_dict(s, r)
        try:
            r.state, r.result, r.reason = _finish(fleet, r, acc)
        except EdgepackError as e:
            r.state, r.reason = "failed", f"aggregation failed: {e.one_line()}"
        except (OSError, ValueError, KeyError) as e:  # an unreadable eval set or round file: fail, do not loop
            r.state, r.reason = "failed", f"closing failed: {type(e).__name__}: {e}"
        r.closed_at = now
        pending = r.result.get("release") == "pending"
    # store_param_update (and the planned rollout) open their own write transactions, so they run after
    # ours committed; a crash in between leaves "pending" and the signed candidate.epu on disk, which
    # close_round retries.
    if pending:
        _publish(fleet, round_id)
    with fleet.db.read() as s:
        return round_dict(s, s.get(FLRound, round_id))


def tick_rounds(fleet: Any, now: float | None = None) -> list[str]:
    """Close every open round whose deadline passed; returns their ids."""
    now = time.time() if now is None else now
    with fleet.db.read() as s:
        due = s.scalars(select(FLRound.id).where(FLRound.state == "open", FLRound.deadline_at <= now)).all()
    for rid in due:
        try:
            close_round(fleet, rid, now=now)
        except Exception:  # noqa: BLE001 (one broken round must not stop the others; retried next tick)
            log.exception("closing round %s failed", rid)
    return list(due)
