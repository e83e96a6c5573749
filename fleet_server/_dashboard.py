"""The server-rendered dashboard at ``/`` (Jinja templates, vendored CSS/JS only).

Log in with an admin token; the session keeps only the token's row id and hash,
re-checked on every page, so revoking the token ends the session. Every form
post carries a per-session CSRF token.
"""

from __future__ import annotations

import functools
import hmac
import secrets
import time
from collections import Counter
from typing import Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, session, url_for
from sqlalchemy import func, select

from . import _ratelimit as ratelimit
from ._audit import entry_dict, page, record
from ._auth import (
    admin_for_token,
    dashboard_admin,
    dashboard_session_expiry,
    start_dashboard_session,
)
from ._bp_admin import device_dict
from ._errors import ApiError
from ._http import fleet, small_uint
from ._models import Alert, Device, Group, Release, Report, Rollout
from ._rollouts import ACTIONS, act, rollout_dict
from ._svg import bar_chart, line_chart

__all__ = ["bp"]

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_hex(32)
    return session["csrf"]


@bp.app_context_processor
def _inject() -> dict[str, Any]:
    return {"csrf_token": csrf_token, "admin": dashboard_admin(), "fmt_time": _fmt_time}


def _fmt_time(t: float | None) -> str:
    if not t:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _check_csrf() -> None:
    sent = request.form.get("csrf_token", "")
    if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
        abort(400, description="missing or wrong CSRF token; reload the page and try again")


def login_required(fn):  # type: ignore[no-untyped-def]
    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        now = time.time()
        expired = dashboard_session_expiry(now)
        if expired:  # enforced here, on every dashboard request, not by the cookie's own lifetime
            session.clear()
            flash(expired)
            return redirect(url_for("dashboard.login", next=request.path))
        if dashboard_admin() is None:
            session.pop("admin_id", None)
            return redirect(url_for("dashboard.login", next=request.path))
        session["seen_at"] = round(now, 3)
        if request.method == "POST":
            _check_csrf()
            # the audit hook (_audit.register) records every POST that got this far, with this actor
            g.dashboard_admin, g.dashboard_admin_id = dashboard_admin(), session.get("admin_id")
        return fn(*a, **kw)
    return wrapper


@bp.route("/login", methods=["GET", "POST"])
def login():  # type: ignore[no-untyped-def]
    error = None
    if request.method == "POST":
        _check_csrf()
        f = fleet()
        wait = ratelimit.blocked_for(f, "login", ratelimit.client_ip())
        if wait:  # refused before the token is even looked at: a locked-out guesser learns nothing
            return (render_template("login.html", error=f"Too many failed logins from your address. "
                                                        f"Try again in {wait} seconds.", locked=True),
                    429, {"Retry-After": str(wait)})
        row = admin_for_token(request.form.get("token", "").strip())
        if row is None:
            ratelimit.record_failure(f, "login")
            error = "That admin token is not valid."
        else:
            start_dashboard_session(row, request.form["token"].strip(), time.time())
            csrf_token()
            with f.db.write() as s:
                record(s, f"dashboard:{row.name}#{row.id}", "dashboard.login", f"admin-token:{row.id}",
                       "logged in to the dashboard", {"client": ratelimit.client_ip()})
            nxt = request.args.get("next", "/")
            return redirect(nxt if nxt.startswith("/") and not nxt.startswith("//") else "/")
    return render_template("login.html", error=error), (401 if error else 200)


@bp.post("/logout")
@login_required
def logout():  # type: ignore[no-untyped-def]
    session.clear()
    return redirect(url_for("dashboard.login"))


@bp.get("/")
@login_required
def overview():  # type: ignore[no-untyped-def]
    f = fleet()
    cutoff = time.time() - f.config.online_after_s
    with f.db.read() as s:
        total = s.scalar(select(func.count()).select_from(Device).where(Device.status == "active")) or 0
        online = s.scalar(select(func.count()).select_from(Device).where(
            Device.status == "active", Device.last_seen_at >= cutoff)) or 0
        versions = s.execute(select(Device.active_version, func.count()).where(Device.status == "active")
                             .group_by(Device.active_version).order_by(Device.active_version)).all()
        counts = dict(s.execute(select(Device.group_id, func.count()).group_by(Device.group_id)).all())
        groups = []
        for g in s.scalars(select(Group).order_by(Group.name)):
            cur = s.get(Release, g.current_release_id) if g.current_release_id else None
            groups.append({"name": g.name, "devices": counts.get(g.id, 0),
                           "release": f"{cur.name} v{cur.version}" if cur else "-"})
        rollouts = [rollout_dict(s, r) for r in s.scalars(select(Rollout).order_by(Rollout.id.desc()).limit(20))]
        alerts = list(s.scalars(select(Alert).where(Alert.acknowledged_at.is_(None)).order_by(Alert.id.desc())
                                .limit(10)))
    dist = {("none" if v is None else f"v{v}"): n for v, n in versions}
    return render_template("overview.html", total=total, online=online, offline=total - online, groups=groups,
                           versions=dist, version_chart=bar_chart(dist, "Version distribution"),
                           rollouts=rollouts, alerts=alerts)


@bp.get("/rollouts/<int:rollout_id>")
@login_required
def rollout(rollout_id: int):  # type: ignore[no-untyped-def]
    with fleet().db.read() as s:
        r = s.get(Rollout, rollout_id)
        if r is None:
            abort(404, description=f"no rollout {rollout_id}")
        d = rollout_dict(s, r, events=True)
        per_wave = dict(s.execute(select(Device.wave, func.count()).where(Device.rollout_id == r.id)
                                  .group_by(Device.wave)).all())
    allowed = [a for a, (states, _) in ACTIONS.items() if d["state"] in states]
    return render_template("rollout.html", r=d, per_wave=per_wave, allowed=allowed)


@bp.post("/rollouts/<int:rollout_id>/<action>")
@login_required
def rollout_action(rollout_id: int, action: str):  # type: ignore[no-untyped-def]
    try:
        act(fleet(), rollout_id, action, f"dashboard:{dashboard_admin()}", request.form.get("reason", ""))
    except ApiError as e:
        flash(e.message)
    return redirect(url_for("dashboard.rollout", rollout_id=rollout_id))


@bp.get("/devices")
@login_required
def devices():  # type: ignore[no-untyped-def]
    f = fleet()
    with f.db.read() as s:
        rows = [device_dict(s, d, f.config.online_after_s)
                for d in s.scalars(select(Device).order_by(Device.enrolled_at.desc()).limit(500))]
    return render_template("devices.html", devices=rows)


@bp.get("/devices/<device_id>")
@login_required
def device(device_id: str):  # type: ignore[no-untyped-def]
    f = fleet()
    with f.db.read() as s:
        d = s.get(Device, device_id)
        if d is None:
            abort(404, description=f"no device {device_id}")
        info = device_dict(s, d, f.config.online_after_s)
        reports = list(s.scalars(select(Report).where(Report.device_id == d.id).order_by(Report.id.desc()).limit(300)))
    reports.reverse()
    tele = [r.data for r in reports if r.kind == "telemetry" and isinstance(r.data, dict)]
    num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)  # noqa: E731
    latency = [float(t["latency_ms"]) for t in tele if num(t.get("latency_ms"))]
    drift = [float(t["drift"]) for t in tele if num(t.get("drift"))]
    preds: Counter[str] = Counter()
    for t in tele:
        pc = t.get("prediction_counts")
        if isinstance(pc, dict):
            preds.update({str(k): float(v) for k, v in pc.items() if num(v)})
    return render_template("device.html", d=info, reports=reports[-30:][::-1],
                           latency_chart=line_chart(latency, "Latency", " ms"),
                           drift_chart=line_chart(drift, "Drift"),
                           pred_chart=bar_chart(dict(preds), "Prediction distribution"))


@bp.get("/alerts")
@login_required
def alerts():  # type: ignore[no-untyped-def]
    with fleet().db.read() as s:
        rows = list(s.scalars(select(Alert).order_by(Alert.id.desc()).limit(200)))
    return render_template("alerts.html", alerts=rows)


@bp.post("/alerts/<int:alert_id>/ack")
@login_required
def ack(alert_id: int):  # type: ignore[no-untyped-def]
    with fleet().db.write() as s:
        a = s.get(Alert, alert_id)
        if a is not None and a.acknowledged_at is None:
            a.acknowledged_at = time.time()
    return redirect(url_for("dashboard.alerts"))


AUDIT_PER_PAGE = 50


@bp.get("/audit")
@login_required
def audit():  # type: ignore[no-untyped-def]
    actor = request.args.get("actor", "").strip()[:200] or None
    action = request.args.get("action", "").strip()[:64] or None
    page_no = max(1, min(small_uint(request.args.get("page")) or 1, 1_000_000))
    with fleet().db.read() as s:
        rows, total = page(s, actor=actor, action=action, page_no=page_no, per_page=AUDIT_PER_PAGE)
        entries = [entry_dict(e) for e in rows]
    pages = max(1, -(-total // AUDIT_PER_PAGE))
    return render_template("audit.html", entries=entries, total=total, page=page_no, pages=pages,
                           actor=actor or "", action=action or "")
