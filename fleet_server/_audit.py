"""The audit trail: who did what, to what, when and why, in a hash-chained append-only table.

``record(s, ...)`` appends one row inside the caller's write transaction, so a
rollout or round decision and its audit row commit (or vanish) together. The
chain is ``hash = sha256(prev_hash + canonical row)``; appends are serialized
inside the transaction (SQLite: ``BEGIN IMMEDIATE`` holds the one write lock;
PostgreSQL: a transaction-scoped advisory lock), so concurrent gunicorn workers
can never fork the chain. ``verify(db)`` walks it and names the first bad row.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, g, has_request_context, request
from sqlalchemy import event, func, inspect, select, text
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException

from edgepack import VerificationError, canonical_bytes

from ._models import RolloutEvent
from ._models_audit import AuditEntry
from ._models_rounds import FLRound

__all__ = ["AuditChainError", "AuditReport", "page", "record", "register", "verify"]

GENESIS = "0" * 64
#: key of the PostgreSQL advisory lock that serializes appends (any constant; "edgepack audit" in ASCII)
_PG_LOCK = 0x6570_6175_6469_74
_MUTATING = ("POST", "PUT", "PATCH", "DELETE")
#: response fields copied into an admin action's details (never the body: it can hold a fresh token)
_SAFE_FIELDS = ("id", "name", "version", "group", "state", "device_id", "revoked", "acknowledged")
# The triggers that make audit_log append-only are created by migration 0002 (fleet_server/migrations).


class AuditChainError(VerificationError):
    """The audit log's hash chain is broken: a row was edited, removed or inserted out of band."""


@dataclass(frozen=True)
class AuditReport:
    """The result of a successful ``verify``: how many rows and the chain's head hash."""

    rows: int
    head: str


def _row_hash(prev: str, e: dict[str, Any]) -> str:
    return hashlib.sha256(prev.encode("ascii") + canonical_bytes(e)).hexdigest()


def _canonical(seq: int, at: float, actor: str, action: str, target: str, reason: str, details: str) -> dict[str, Any]:
    return {"seq": seq, "at": at, "actor": actor, "action": action, "target": target, "reason": reason,
            "details": details}


def record(s: Session, actor: str, action: str, target: str, reason: str = "",
           details: dict[str, Any] | None = None, *, at: float | None = None) -> AuditEntry:
    """Append one audit row in the caller's write transaction (``with db.write() as s``).

    Safe inside a ``before_flush`` hook: it never flushes. The chain head is read
    once per transaction, under the lock, and then kept in ``s.info``.
    """
    head = s.info.get("audit_head")
    if head is None:
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
        last = s.execute(select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1)).first()
        head = (last.seq, last.hash) if last else (0, GENESIS)
    seq, prev = head[0] + 1, head[1]
    det = canonical_bytes(details or {}).decode("utf-8")
    row = _canonical(seq, float(time.time() if at is None else at), actor[:200], action[:64], target[:256],
                     (reason or "")[:2000], det)
    entry = AuditEntry(**row, prev_hash=prev, hash=_row_hash(prev, row))
    s.add(entry)
    s.info["audit_head"] = (seq, entry.hash)
    return entry


@event.listens_for(Session, "after_rollback")
def _forget_head(s: Session) -> None:
    s.info.pop("audit_head", None)


@event.listens_for(Session, "after_commit")
def _forget_head_after_commit(s: Session) -> None:
    s.info.pop("audit_head", None)


def verify(db: Any, batch: int = 1000) -> AuditReport:
    """Walk the whole chain.

    Raises:
        AuditChainError: at the first row whose seq, link or hash is wrong.
    """
    prev, n = GENESIS, 0
    with db.read() as s:
        for e in s.scalars(select(AuditEntry).order_by(AuditEntry.seq).execution_options(yield_per=batch)):
            n += 1
            where = f"audit_log seq {e.seq}"
            if e.seq != n:
                raise AuditChainError(f"audit row {n} is missing (next is seq {e.seq})", where=where,
                                      hint="rows were deleted behind the triggers' back")
            if e.prev_hash != prev:
                raise AuditChainError(f"audit row {e.seq} does not link to row {e.seq - 1}", where=where)
            row = _canonical(e.seq, e.at, e.actor, e.action, e.target, e.reason, e.details)
            if _row_hash(prev, row) != e.hash:
                raise AuditChainError(f"audit row {e.seq} was modified after it was written", where=where)
            prev = e.hash
    return AuditReport(rows=n, head=prev)


def entry_dict(e: AuditEntry) -> dict[str, Any]:
    return {"seq": e.seq, "at": e.at, "actor": e.actor, "action": e.action, "target": e.target,
            "reason": e.reason, "details": json.loads(e.details), "hash": e.hash}


def page(s: Session, *, actor: str | None = None, action: str | None = None, page_no: int = 1,
         per_page: int = 50) -> tuple[list[AuditEntry], int]:
    """Newest first; ``actor`` matches exactly or as a prefix before ':'/'#', ``action`` exactly or as a prefix."""
    q = select(AuditEntry)
    if actor:
        q = q.where((AuditEntry.actor == actor) | AuditEntry.actor.startswith(actor + ":", autoescape=True)
                    | AuditEntry.actor.startswith(actor + "#", autoescape=True))
    if action:
        q = q.where((AuditEntry.action == action) | AuditEntry.action.startswith(action + ".", autoescape=True))
    total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = list(s.scalars(q.order_by(AuditEntry.seq.desc()).offset((page_no - 1) * per_page).limit(per_page)))
    return rows, total


def admin_actor() -> str | None:
    """The actor of this request: an API admin token or a dashboard session, else None."""
    if "admin" in g:
        return f"admin:{g.admin}#{g.get('admin_id', '?')}"
    if "dashboard_admin" in g:
        return f"dashboard:{g.dashboard_admin}#{g.get('dashboard_admin_id', '?')}"
    return None


def _request_reason() -> str:
    try:
        return _reason_of_body()
    except HTTPException:  # a body over the size limit: the 413 is the answer, the reason stays empty
        return ""


def _reason_of_body() -> str:
    if request.mimetype != "application/json":
        return request.form.get("reason", "") if request.mimetype == "application/x-www-form-urlencoded" else ""
    doc = request.get_json(silent=True, cache=True)
    reason = doc.get("reason") if isinstance(doc, dict) else None
    return reason if isinstance(reason, str) else ""


def register(app: Flask, fleet: Any) -> None:
    """Record every mutating request made with admin credentials, whatever its outcome.

    An action that changes the database gets its row in the *same transaction* as its
    first change (``_admin_action`` below), so a crash right after the commit cannot
    leave an action without its record. A request that changed nothing (refused,
    invalid, rolled back) is recorded here, after the response, with its status.
    """

    @app.after_request
    def _audit(resp):  # type: ignore[no-untyped-def]
        actor = admin_actor()
        if request.method not in _MUTATING or actor is None or g.get("_audit_done"):
            return resp
        g._audit_done = True  # this write must not record the action a second time
        details: dict[str, Any] = {"method": request.method, "status": resp.status_code}
        body = resp.get_json(silent=True) if resp.is_json else None
        if isinstance(body, dict):
            details.update({k: body[k] for k in _SAFE_FIELDS if isinstance(body.get(k), (str, int, bool))})
            if resp.status_code >= 400:
                details["error"] = body.get("error")
        with fleet.db.write() as s:
            record(s, actor, f"api.{request.endpoint}", request.path, _request_reason(), details)
        return resp


def _request_admin() -> str | None:
    """The admin behind a mutating request, if this code runs inside one (a GET's side effects are the system's)."""
    if has_request_context() and request.method in _MUTATING:
        return admin_actor()
    return None


def _rollout_event(s: Session, e: RolloutEvent) -> None:
    by = e.actor if e.actor not in (None, "server") else None
    actor = (_request_admin() or by) if by else "system"
    action = f"rollout.{e.kind}"
    if e.kind == "rolled_back":
        action = "rollout.rollback" if by else "rollout.auto_rollback"  # gate trip or deadline expiry
    record(s, actor, action, f"rollout:{e.rollout_id}", e.message, {"rollout_id": e.rollout_id, "event": e.kind})


def _round_change(s: Session, r: FLRound, new: bool) -> None:
    actor = _request_admin() or "system"
    target = f"round:{r.id}"
    if new:
        record(s, actor, "round.open", target, f"{r.model} v{r.base_version}: {len(r.selected)} device(s) selected",
               {"model": r.model, "base_version": r.base_version, "selected": len(r.selected), "quorum": r.quorum,
                "deadline_at": r.deadline_at})
        return
    attrs = inspect(r).attrs
    if attrs.state.history.added:
        result = r.result or {}
        record(s, actor, f"round.{r.state}", target, r.reason or r.state,
               {k: result[k] for k in ("accepted", "version", "champion_accuracy", "candidate_accuracy",
                                       "threshold", "promoted") if k in result})
        if r.state == "closed" and "promoted" in result:
            record(s, actor, "round.promote" if result["promoted"] else "round.reject", target,
                   r.reason or ("candidate promoted" if result["promoted"] else "candidate rejected"),
                   {"version": result.get("version")})
    elif attrs.result.history.added and isinstance((r.result or {}).get("release"), dict):
        rel = r.result["release"]
        record(s, actor, "round.publish", target, r.reason or "candidate stored as a parameter release",
               {k: rel[k] for k in ("id", "name", "version") if k in rel})


def _admin_action(s: Session) -> None:
    """The first change an admin request makes carries the request's own audit row."""
    actor = _request_admin()
    if actor is None or g.get("_audit_done") or s.info.get("audit_action"):
        return
    s.info["audit_action"] = True
    record(s, actor, f"api.{request.endpoint}", request.path, _request_reason(),
           {"method": request.method, "recorded": "with the change"})


@event.listens_for(Session, "after_commit")
def _action_committed(s: Session) -> None:
    if s.info.pop("audit_action", None) and has_request_context():
        g._audit_done = True


@event.listens_for(Session, "after_rollback")
def _action_rolled_back(s: Session) -> None:
    s.info.pop("audit_action", None)  # nothing was changed: the after-request hook records the outcome


@event.listens_for(Session, "before_flush")
def _decisions(s: Session, _ctx: Any, _instances: Any) -> None:
    """Rollout events and round state changes are decisions: audit them in their own transaction."""
    if s.new or s.dirty or s.deleted:
        _admin_action(s)
    for obj in list(s.new):
        if isinstance(obj, RolloutEvent):
            _rollout_event(s, obj)
        elif isinstance(obj, FLRound):
            _round_change(s, obj, new=True)
    for obj in list(s.dirty):
        if isinstance(obj, FLRound):
            _round_change(s, obj, new=False)
