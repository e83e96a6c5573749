"""Rollouts: a release goes to a group in waves, each gated on device health.

States and their ways out (a rollout can never be stuck; every non-terminal
state has a deadline):

    running  --gates ready, last wave-->  completed
    running  --gates ready-->             running (next wave)
    running  --gate tripped / deadline--> rolled_back (automatic, reason recorded)
    running  --pause-->                   paused    (deadline: pause_deadline_s)
    paused   --resume-->                  running   (fresh wave deadline)
    paused   --deadline-->                rolled_back
    running|paused --abort-->             aborted   (no new assignments; devices keep what they have)
    running|paused|completed --rollback--> rolled_back (every touched device gets the previous release)

Every rollback (gate, deadline or manual) republishes the previous release to the group and
withdraws the rolled-back one from the group's signed TUF metadata before devices are pointed
back: that withdrawal, not the unsigned assignment, is what lets a device that already runs the
release go back to its previous slot (docs/delivery.md, "Fleet rollback"). An abort withdraws
nothing: devices keep what they run.

Devices join a wave in a stable pseudo-random order (sha256 of rollout id and
device id), so a wave is a superset of the one before and a restart changes nothing.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from ._errors import BadRequestError, ConflictError, NotFoundError, RolloutStateError
from ._gates import GateConfig, evaluate
from ._models import Alert, Device, Group, Release, Report, Rollout, RolloutEvent
from ._publish import publish_release, withdraw_release

__all__ = ["ACTIONS", "ACTIVE", "DEFAULT_TIMING", "DEFAULT_WAVES", "act", "create_rollout", "rollout_dict",
           "tick", "tick_all"]

ACTIVE = ("running", "paused")
DEFAULT_WAVES = [1, 10, 50, 100]
DEFAULT_TIMING = {"wave_deadline_s": 6 * 3600, "pause_deadline_s": 24 * 3600, "min_wave_s": 0}
_REPORT_WINDOW = 20000  # newest reports a gate looks at; bounds the cost of one evaluation
_REPORTS_PER_DEVICE = 5  # per device and (kind, ok): a gate counts each device once anyway (_gates)


def _check_waves(waves: Any) -> list[float]:
    if waves is None:
        return list(DEFAULT_WAVES)
    ok = (isinstance(waves, list) and 1 <= len(waves) <= 10
          and all(isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w <= 100 for w in waves)
          and all(a < b for a, b in zip(waves, waves[1:], strict=False)) and waves[-1] == 100)
    if not ok:
        raise BadRequestError("waves must be 1-10 increasing percentages ending at 100", where="waves",
                              hint="for example [1, 10, 50, 100]")
    return list(waves)


def _check_timing(timing: Any) -> dict[str, float]:
    if timing is None:
        return dict(DEFAULT_TIMING)
    if not isinstance(timing, dict) or set(timing) - set(DEFAULT_TIMING):
        raise BadRequestError(f"timing takes only {sorted(DEFAULT_TIMING)}", where="timing")
    out = {**DEFAULT_TIMING, **timing}
    for k, v in out.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (k != "min_wave_s" and v <= 0):
            raise BadRequestError(f"timing.{k} must be a positive number of seconds", where=f"timing.{k}")
    return out


def _event(s: Session, r: Rollout, kind: str, message: str, actor: str) -> None:
    s.add(RolloutEvent(rollout_id=r.id, kind=kind, message=message, actor=actor))


def _order(rollout_id: int, device_id: str) -> str:
    return hashlib.sha256(f"{rollout_id}:{device_id}".encode()).hexdigest()


def _assign_wave(s: Session, r: Rollout) -> int:
    """Assign the release to the devices of the current wave; return how many were newly assigned."""
    ids = list(s.scalars(select(Device.id).where(Device.group_id == r.group_id, Device.status == "active")))
    ids.sort(key=lambda d: _order(r.id, d))
    pct = r.waves[r.wave_index]
    target = min(len(ids), max(1, math.ceil(len(ids) * pct / 100)))
    chosen = ids[:target]
    done = set(s.scalars(select(Device.id).where(Device.rollout_id == r.id)))
    new = [d for d in chosen if d not in done]
    for i in range(0, len(new), 500):
        s.execute(update(Device).where(Device.id.in_(new[i:i + 500]))
                  .values(desired_release_id=r.release_id, rollout_id=r.id, wave=r.wave_index))
    return len(new)


def create_rollout(fleet: Any, s: Session, release: Release, group: Group, *, waves: Any = None,
                   gates: Any = None, timing: Any = None, actor: str = "admin") -> Rollout:
    """Start a rollout of ``release`` to ``group`` and assign its first wave.

    Raises:
        BadRequestError: bad waves, gates or timing.
        ConflictError: the group already has an active rollout, or the release is not newer.
    """
    waves, gate_cfg, timing = _check_waves(waves), GateConfig.from_dict(gates), _check_timing(timing)
    busy = s.scalar(select(Rollout.id).where(Rollout.group_id == group.id, Rollout.state.in_(ACTIVE)))
    if busy is not None:
        raise ConflictError(f"group {group.name!r} already has active rollout {busy}", where="group",
                            hint="finish, abort or roll back that rollout first")
    prev = s.get(Release, group.current_release_id) if group.current_release_id else None
    if prev is not None and prev.name == release.name and release.version <= prev.version:
        raise ConflictError(f"{release.name} v{release.version} is not newer than the group's v{prev.version}",
                            where="release", hint="to go back, roll back the rollout that installed it")
    now = time.time()
    r = Rollout(release_id=release.id, group_id=group.id, previous_release_id=prev.id if prev else None,
                state="running", waves=waves, wave_index=0, wave_started_at=now, gates=gate_cfg.to_dict(),
                timing=timing, deadline_at=now + timing["wave_deadline_s"], gate_status={})
    s.add(r)
    s.flush()
    n = _assign_wave(s, r)
    _event(s, r, "started", f"{release.name} v{release.version} to {group.name}; wave 1 ({waves[0]}%) "
                            f"assigned to {n} device(s)", actor)
    return r


def _rollback(fleet: Any, s: Session, r: Rollout, reason: str, actor: str, *, auto: bool) -> None:
    prev = s.get(Release, r.previous_release_id) if r.previous_release_id else None
    release = s.get(Release, r.release_id)
    group = s.get(Group, r.group_id)
    if prev is not None:
        try:  # the previous release must still be downloadable (Greengrass #1203: rollback to a deleted version)
            publish_release(fleet.publisher, group.name, prev)
        except Exception as e:  # noqa: BLE001 (recorded as an alert; the assignment still goes back)
            s.add(Alert(level="critical", kind="publish", rollout_id=r.id,
                        message=f"could not republish {prev.name} v{prev.version} for the rollback: {e}"))
    try:  # devices that run the release follow the rollback only once TUF stops vouching for it
        withdraw_release(fleet.publisher, group.name, release)
    except Exception as e:  # noqa: BLE001 (recorded as an alert; devices keep serving what they run)
        s.add(Alert(level="critical", kind="publish", rollout_id=r.id,
                    message=f"could not withdraw {release.name} v{release.version} from {group.name}'s TUF "
                            f"metadata: devices that installed it keep running it: {e}"))
    cond = Device.rollout_id == r.id
    if r.state == "completed":
        cond = (Device.group_id == r.group_id) & (Device.desired_release_id == r.release_id)
        group.current_release_id = prev.id if prev else None
    s.execute(update(Device).where(cond).values(desired_release_id=prev.id if prev else None, rollout_id=r.id))
    target = f"{prev.name} v{prev.version}" if prev else "no release (there was none before)"
    r.state, r.reason, r.finished_at, r.deadline_at = "rolled_back", reason, time.time(), None
    _event(s, r, "rolled_back", f"back to {target}: {reason}", actor)
    s.add(Alert(level="critical" if auto else "info", kind="rollback", rollout_id=r.id,
                message=f"rollout {r.id} of {release.name} v{release.version} to {group.name} "
                        f"{'automatically ' if auto else ''}rolled back to {target}: {reason}"))


def _complete(s: Session, r: Rollout) -> None:
    group = s.get(Group, r.group_id)
    group.current_release_id = r.release_id
    s.execute(update(Device).where(Device.group_id == r.group_id, Device.status == "active",
                                   (Device.desired_release_id != r.release_id) | Device.desired_release_id.is_(None))
              .values(desired_release_id=r.release_id, rollout_id=r.id, wave=r.wave_index))
    r.state, r.finished_at, r.deadline_at, r.reason = "completed", time.time(), None, None
    _event(s, r, "completed", "every wave passed its health gates", "server")


def _measure(s: Session, r: Rollout) -> Any:
    release = s.get(Release, r.release_id)
    # The newest few reports of each device per (kind, ok), then the newest of those: a device that
    # floods reports cannot push other devices' reports out of the window (docs/threat-model.md, R5).
    rank = func.row_number().over(partition_by=(Report.device_id, Report.kind, Report.ok),
                                  order_by=Report.id.desc()).label("rank")
    newest = (select(Report.id, rank).where(Report.rollout_id == r.id, Report.release_version == release.version)
              .subquery())
    reports = list(s.scalars(select(Report).join(newest, newest.c.id == Report.id)
                             .where(newest.c.rank <= _REPORTS_PER_DEVICE)
                             .order_by(Report.id.desc()).limit(_REPORT_WINDOW)))
    assigned = s.scalar(select(func.count()).select_from(Device).where(Device.rollout_id == r.id)) or 0
    wave_devices = set(s.scalars(select(Device.id).where(Device.rollout_id == r.id, Device.wave == r.wave_index)))
    baseline: list[float] = []
    if r.previous_release_id:
        prev = s.get(Release, r.previous_release_id)
        rows = s.scalars(select(Report.data).join(Device, Device.id == Report.device_id)
                         .where(Device.group_id == r.group_id, Report.kind == "telemetry",
                                Report.release_version == prev.version)
                         .order_by(Report.id.desc()).limit(2000))
        baseline = [float(d["latency_ms"]) for d in rows if isinstance(d, dict)
                    and isinstance(d.get("latency_ms"), (int, float)) and not isinstance(d.get("latency_ms"), bool)]
    return evaluate(GateConfig.from_dict(r.gates), reports, baseline, assigned, wave_devices)


def _step(fleet: Any, s: Session, r: Rollout, now: float) -> None:
    if r.state == "paused":
        if r.deadline_at is not None and now >= r.deadline_at:
            _rollback(fleet, s, r, f"paused for longer than {r.timing['pause_deadline_s']:.0f} s without a decision",
                      "server", auto=True)
        return
    result = _measure(s, r)
    status = {"wave": r.wave_index, "tripped": result.tripped, "ready": result.ready, **result.metrics}
    if status != r.gate_status:
        r.gate_status = status
    wave = f"wave {r.wave_index + 1} ({r.waves[r.wave_index]}%)"
    if result.tripped:
        _rollback(fleet, s, r, f"health gate tripped in {wave}: {result.reason}", "server", auto=True)
    elif result.ready and now - r.wave_started_at >= r.timing["min_wave_s"]:
        if r.wave_index + 1 >= len(r.waves):
            _complete(s, r)
        else:
            r.wave_index += 1
            r.wave_started_at, r.deadline_at = now, now + r.timing["wave_deadline_s"]
            n = _assign_wave(s, r)
            _event(s, r, "wave", f"wave {r.wave_index + 1} ({r.waves[r.wave_index]}%) assigned to {n} more "
                                 f"device(s)", "server")
    elif r.deadline_at is not None and now >= r.deadline_at:
        m = result.metrics
        _rollback(fleet, s, r, f"{wave} missed its deadline: {m['wave_ok']}/{m['wave_needed']} healthy device "
                               f"report(s) needed", "server", auto=True)


def tick(fleet: Any, rollout_id: int, now: float | None = None) -> str | None:
    """Advance, complete or roll back one rollout as its reports and deadlines say; return its state.

    Safe to call from any number of workers: a concurrent change makes this call a no-op.
    """
    try:
        with fleet.db.write() as s:
            r = s.get(Rollout, rollout_id)
            if r is None:
                return None
            if r.state in ACTIVE:
                _step(fleet, s, r, time.time() if now is None else now)
                r.updated_at = time.time()
            return r.state
    except StaleDataError:
        return None


def tick_all(fleet: Any, now: float | None = None) -> dict[int, str | None]:
    with fleet.db.read() as s:
        ids = list(s.scalars(select(Rollout.id).where(Rollout.state.in_(ACTIVE))))
    return {i: tick(fleet, i, now) for i in ids}


def _pause(fleet: Any, s: Session, r: Rollout, reason: str, actor: str) -> None:
    r.state, r.deadline_at = "paused", time.time() + r.timing["pause_deadline_s"]
    _event(s, r, "paused", reason or "paused", actor)


def _resume(fleet: Any, s: Session, r: Rollout, reason: str, actor: str) -> None:
    r.state, r.deadline_at = "running", time.time() + r.timing["wave_deadline_s"]
    _event(s, r, "resumed", reason or "resumed", actor)


def _abort(fleet: Any, s: Session, r: Rollout, reason: str, actor: str) -> None:
    r.state, r.finished_at, r.deadline_at, r.reason = "aborted", time.time(), None, reason or "aborted"
    _event(s, r, "aborted", f"{r.reason}; devices keep what they run", actor)


def _manual_rollback(fleet: Any, s: Session, r: Rollout, reason: str, actor: str) -> None:
    _rollback(fleet, s, r, reason or "manual rollback", actor, auto=False)


#: action -> (states it is allowed in, handler); a registry, not an if-chain
ACTIONS = {
    "pause": (("running",), _pause),
    "resume": (("paused",), _resume),
    "abort": (ACTIVE, _abort),
    "rollback": ((*ACTIVE, "completed"), _manual_rollback),
}


def act(fleet: Any, rollout_id: int, action: str, actor: str, reason: str = "") -> dict[str, Any]:
    """Apply a manual action; return the rollout as a dict.

    Raises:
        NotFoundError: no such rollout or action.
        RolloutStateError: the action is not allowed in the current state.
    """
    if action not in ACTIONS:
        raise NotFoundError(f"no rollout action {action!r}", hint=f"one of {sorted(ACTIONS)}")
    allowed, handler = ACTIONS[action]
    try:
        with fleet.db.write() as s:
            r = s.get(Rollout, rollout_id)
            if r is None:
                raise NotFoundError(f"no rollout {rollout_id}")
            if r.state not in allowed:
                raise RolloutStateError(f"cannot {action} a rollout that is {r.state}",
                                        hint=f"{action} is allowed when {' or '.join(allowed)}")
            handler(fleet, s, r, reason, actor)
            r.updated_at = time.time()
            s.flush()
            return rollout_dict(s, r)
    except StaleDataError as e:
        raise ConflictError("the rollout changed at the same moment; try again") from e


def rollout_dict(s: Session, r: Rollout, *, events: bool = False) -> dict[str, Any]:
    release = s.get(Release, r.release_id)
    prev = s.get(Release, r.previous_release_id) if r.previous_release_id else None
    group = s.get(Group, r.group_id)
    assigned = s.scalar(select(func.count()).select_from(Device).where(Device.rollout_id == r.id)) or 0
    d: dict[str, Any] = {
        "id": r.id, "state": r.state, "group": group.name,
        "release": {"id": release.id, "name": release.name, "version": release.version},
        "previous_release": {"id": prev.id, "name": prev.name, "version": prev.version} if prev else None,
        "waves": r.waves, "wave_index": r.wave_index, "wave_started_at": r.wave_started_at,
        "deadline_at": r.deadline_at, "gates": r.gates, "timing": r.timing, "gate_status": r.gate_status,
        "reason": r.reason, "assigned_devices": assigned, "created_at": r.created_at,
        "updated_at": r.updated_at, "finished_at": r.finished_at,
    }
    if events:
        d["events"] = [{"at": e.at, "kind": e.kind, "message": e.message, "actor": e.actor}
                       for e in s.scalars(select(RolloutEvent).where(RolloutEvent.rollout_id == r.id)
                                          .order_by(RolloutEvent.id))]
    return d
