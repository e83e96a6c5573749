"""Dashboard pages for federated rounds: the list, and one page per round (participants, rejected
updates with reasons, accuracy per round as inline SVG). Same login and CSP rules as ``_dashboard``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, render_template
from sqlalchemy import select

from ._dashboard import login_required
from ._http import fleet
from ._models_rounds import FLRound
from ._rounds import round_dict
from ._svg import line_chart

__all__ = ["bp"]

bp = Blueprint("rounds_dashboard", __name__, template_folder="templates", url_prefix="/rounds")


def _accuracy_series(rounds: list[dict[str, Any]]) -> list[float]:
    return [float(r["result"]["candidate_accuracy"]) for r in rounds
            if isinstance((r.get("result") or {}).get("candidate_accuracy"), (int, float))]


@bp.get("")
@login_required
def rounds():  # type: ignore[no-untyped-def]
    with fleet().db.read() as s:
        rows = [round_dict(s, r, updates=False)
                for r in s.scalars(select(FLRound).order_by(FLRound.created_at.desc()).limit(200))]
    return render_template("rounds.html", rounds=rows)


@bp.get("/<round_id>")
@login_required
def round_page(round_id: str):  # type: ignore[no-untyped-def]
    with fleet().db.read() as s:
        r = s.get(FLRound, round_id)
        if r is None:
            abort(404, description=f"no round {round_id}")
        info = round_dict(s, r)
        history = [round_dict(s, x, updates=False) for x in s.scalars(
            select(FLRound).where(FLRound.model == r.model).order_by(FLRound.created_at))]
    by_dev = {u["device_id"]: u for u in info["accepted"]}
    participants = [{"device_id": d, "upd": by_dev.get(d)} for d in info["selected"]]
    return render_template("round.html", r=info, participants=participants,
                           accuracy_chart=line_chart(_accuracy_series(history), f"{r.model} accuracy per round"))
