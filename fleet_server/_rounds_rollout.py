"""A round's rollout plan: when its candidate is promoted, roll the new parameter release out.

The plan (``{"group", "waves", "gates", "timing"}``) is checked when the round is
created, with the same rules as ``POST /api/v1/admin/rollouts``, so a round never
fails at its end over a typo. On promotion the release is published to TUF first
(as the admin API does: no device is assigned a target it cannot fetch), then the
rollout is created with the same health-gated waves, and a ``promoted`` event
records why it started (round, champion and candidate accuracy, threshold).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from edgepack import EdgepackError

from ._errors import BadRequestError, NotFoundError
from ._gates import GateConfig
from ._models import Group, Release, RolloutEvent
from ._publish import publish_release
from ._rollouts import _check_timing, _check_waves, create_rollout, tick

__all__ = ["check_plan", "start_planned_rollout"]


def check_plan(fleet: Any, plan: Any) -> dict[str, Any]:
    """Validate a round's rollout plan; return it with defaults filled in.

    Raises:
        BadRequestError: not an object, unknown fields, bad waves, gates or timing.
        NotFoundError: no such group.
    """
    if not isinstance(plan, dict) or set(plan) - {"group", "waves", "gates", "timing"}:
        raise BadRequestError("rollout must be an object with group, waves, gates, timing", where="rollout",
                              hint='for example {"group": "default", "waves": [10, 100]}')
    group = plan.get("group", "default")
    if not isinstance(group, str):
        raise BadRequestError("rollout.group must be a group name", where="rollout.group")
    with fleet.db.read() as s:
        if s.scalar(select(Group.id).where(Group.name == group)) is None:
            raise NotFoundError(f"no group {group!r}", where="rollout.group")
    return {"group": group, "waves": _check_waves(plan.get("waves")),
            "gates": GateConfig.from_dict(plan.get("gates")).to_dict(), "timing": _check_timing(plan.get("timing"))}


def start_planned_rollout(fleet: Any, round_id: str, release_id: int, plan: dict[str, Any],
                          why: str) -> dict[str, Any]:
    """Publish the promoted release and start its rollout per ``plan``; return ``{"id", "group", "state"}``.

    Raises:
        EdgepackError: publishing failed (for example a fleet without TUF), or the group already has an
            active rollout or a newer release (``ConflictError``).
    """
    with fleet.db.read() as s:
        rel = s.get(Release, release_id)
        grp = s.scalar(select(Group).where(Group.name == plan["group"]))
        if rel is None or grp is None:
            raise NotFoundError(f"release {release_id} or group {plan['group']!r} is gone", where="rollout")
        s.expunge(rel)
        gid = grp.id
    publish_release(fleet.publisher, plan["group"], rel)
    with fleet.db.write() as s:
        r = create_rollout(fleet, s, s.get(Release, rel.id), s.get(Group, gid), waves=plan["waves"],
                           gates=plan["gates"], timing=plan["timing"], actor=f"round {round_id}")
        s.add(RolloutEvent(rollout_id=r.id, kind="promoted", message=why, actor=f"round {round_id}"))
        s.flush()
        rid = r.id
    state = tick(fleet, rid)  # a group small enough may already be ready, or empty
    return {"id": rid, "group": plan["group"], "state": state}


def try_planned_rollout(fleet: Any, round_id: str, release_id: int, plan: dict[str, Any],
                        why: str) -> tuple[dict[str, Any] | None, str | None]:
    """``start_planned_rollout``, with a failure turned into (None, reason) for the round's record."""
    try:
        return start_planned_rollout(fleet, round_id, release_id, plan, why), None
    except EdgepackError as e:
        return None, f"promoted and released, but its rollout to {plan['group']!r} did not start: {e.one_line()}"
