"""``edgepack fl``: start and follow federated rounds through the fleet's admin API (stdlib HTTP only)."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from typing import Any

from .._errors import FleetError, UsageError
from . import add_command, emit

__all__ = ["FlRequestError", "register"]


class FlRequestError(FleetError):
    """The fleet server refused an ``edgepack fl`` request or could not be reached."""


def register(sub: argparse._SubParsersAction) -> None:
    fl = sub.add_parser("fl", help="federated rounds: start, status, history, simulate",
                        description="Start and follow federated rounds on a fleet server.",
                        epilog="Example:\n  edgepack fl start --server http://127.0.0.1:8080 --model digits "
                               "--base-version 1 --params W,b --min-clients 4 --deadline-s 600",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    fsub = fl.add_subparsers(dest="fl_command", metavar="ACTION")
    fl.set_defaults(func=lambda a: fl.print_help() or 0)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", default=os.environ.get("EDGEPACK_FLEET_URL", "http://127.0.0.1:8080"),
                       help="fleet server URL (default $EDGEPACK_FLEET_URL)")
        p.add_argument("--token", default=None, help="admin token (default $EDGEPACK_ADMIN_TOKEN)")

    st = add_command(fsub, "start", "create a round for a model and base version, and pick its cohort",
                     "edgepack fl start --model digits --base-version 1 --params W,b --min-clients 4")
    common(st)
    st.add_argument("--model", required=True)
    st.add_argument("--base-version", type=int, required=True)
    st.add_argument("--params", required=True, help="comma-separated ONNX initializer names to train")
    st.add_argument("--artifact", default=None, help="ONNX artifact in the bundle (default: the first .onnx)")
    st.add_argument("--fraction", type=float, default=1.0)
    st.add_argument("--min-clients", type=int, default=1)
    st.add_argument("--quorum", type=int, default=None, help="accepted updates needed (default min-clients)")
    st.add_argument("--deadline-s", type=float, default=3600.0)
    st.add_argument("--codec", action="append", default=None, help="allowed codec (repeat; default none)")
    st.add_argument("--max-norm", type=float, default=None)
    st.add_argument("--eval", default=None, help="server-side .npz (x, y) for champion/challenger")
    st.add_argument("--threshold", type=float, default=0.0, help="accuracy the candidate may lose and still win")
    st.set_defaults(func=_start)

    ss = add_command(fsub, "status", "show one round: cohort, accepted and rejected updates, result",
                     "edgepack fl status r-0123456789abcdef")
    common(ss)
    ss.add_argument("round_id")
    ss.set_defaults(func=_status)

    hi = add_command(fsub, "history", "list rounds with their outcome and accuracy",
                     "edgepack fl history --model digits")
    common(hi)
    hi.add_argument("--model", default=None)
    hi.set_defaults(func=_history)

    from ._fl_simulate import add_simulate

    add_simulate(fsub)


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    token = args.token or os.environ.get("EDGEPACK_ADMIN_TOKEN")
    if not token:
        raise UsageError("no admin token", where="--token", hint="pass --token or set EDGEPACK_ADMIN_TOKEN")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(args.server.rstrip("/") + "/api/v1/admin" + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read() or b"{}")
        except ValueError:
            err = {}
        raise FlRequestError(f"the server answered {e.code}: {err.get('message', e.reason)}",
                             where=f"{method} {path}", hint=err.get("hint")) from e
    except (urllib.error.URLError, OSError) as e:
        raise FlRequestError(f"cannot reach {args.server}: {e}", where="--server",
                             hint="is 'edgepack fleet serve' running there?") from e


def _start(args: argparse.Namespace) -> int:
    body = {"model": args.model, "base_version": args.base_version,
            "params": [p for p in args.params.split(",") if p], "artifact": args.artifact,
            "fraction": args.fraction, "min_clients": args.min_clients, "quorum": args.quorum,
            "deadline_s": args.deadline_s, "codecs": args.codec or ["none"],
            "policy": {"max_norm": args.max_norm} if args.max_norm else {},
            "evaluation": {"path": os.path.abspath(args.eval), "threshold": args.threshold} if args.eval else None}
    r = _call(args, "POST", "/rounds", body)
    emit(args, r, f"round {r['id']}: {len(r['selected'])} device(s) selected of {r['cohort']['eligible']} eligible, "
                  f"quorum {r['quorum']}")
    return 0


def _acc(r: dict[str, Any]) -> str:
    res = r.get("result") or {}
    if "candidate_accuracy" not in res:
        return "-"
    return f"{res['champion_accuracy']:.4f} -> {res['candidate_accuracy']:.4f}"


def _status(args: argparse.Namespace) -> int:
    r = _call(args, "GET", f"/rounds/{args.round_id}")
    lines = [f"round {r['id']} ({r['model']} v{r['base_version']}): {r['state']}",
             f"  accepted {len(r['accepted'])}/{len(r['selected'])} selected, quorum {r['quorum']}",
             f"  accuracy {_acc(r)}, promoted {(r.get('result') or {}).get('promoted')}"]
    lines += [f"  rejected {x['device_id']}: {x['reason']} ({x['detail']})" for x in r["rejected"]]
    if r.get("reason"):
        lines.append(f"  note: {r['reason']}")
    emit(args, r, "\n".join(lines))
    return 0


def _history(args: argparse.Namespace) -> int:
    rounds = _call(args, "GET", "/rounds" + (f"?model={args.model}" if args.model else ""))
    rows = [f"{'round':<20} {'model':<12} {'base':>4} {'state':<7} {'accepted':>8} {'accuracy':<18} promoted"]
    for r in rounds:
        res = r.get("result") or {}
        rows.append(f"{r['id']:<20} {r['model']:<12} {r['base_version']:>4} {r['state']:<7} "
                    f"{res.get('accepted', '-')!s:>8} {_acc(r):<18} {res.get('promoted', '-')}")
    emit(args, {"rounds": rounds}, "\n".join(rows))
    return 0
