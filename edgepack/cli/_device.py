"""``edgepack device run`` and ``edgepack device status``: the device agent.

The first run pins the trust anchors into the state directory (the release
trust file, the update trust file and TUF ``1.root.json``, all given out of
band) and enrolls with a one-time token; later runs need only
``--server`` and ``--state``. Imports ``runtime`` lazily, inside the commands.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

from .._errors import UsageError
from .._trust import load_trust
from . import add_command, emit

PINNED = {"trust": "release-trust.json", "update_trust": "update-trust.json", "tuf_root": "tuf-root.json"}


def register(sub: argparse._SubParsersAction) -> None:
    dev = sub.add_parser("device", help="run the device agent (TUF delivery into the A/B store)",
                         description="Run the device agent: poll the fleet server, install verified updates.",
                         epilog="Example:\n  edgepack device run --server http://fleet:8080 --state /var/lib/edgepack "
                                "--trust trust.json --tuf-root 1.root.json --enroll-token epe_...",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = dev.add_subparsers(dest="device_command", metavar="ACTION")
    dev.set_defaults(func=lambda a: dev.print_help() or 0)

    run = add_command(dsub, "run", "enroll once, then check in, verify, install and report until stopped",
                      "edgepack device run --server http://127.0.0.1:8080 --state state/ "
                      "--trust trust.json --tuf-root 1.root.json --enroll-token epe_xxx")
    run.add_argument("--server", required=True, help="fleet server base URL")
    run.add_argument("--state", required=True, type=Path, help="the device's state directory")
    run.add_argument("--trust", type=Path, help="release trust file (first run; pinned into --state)")
    run.add_argument("--update-trust", type=Path,
                     help="trust file for parameter updates (the fleet's federated key; default: --trust)")
    run.add_argument("--tuf-root", type=Path, help="the fleet's TUF 1.root.json (first run; pinned)")
    run.add_argument("--enroll-token", help="one-time enrollment token (first run)")
    run.add_argument("--name", default="device", help="device name shown on the dashboard")
    run.add_argument("--max-steps", type=int, default=None, help="stop after N check-ins (default: run forever)")
    run.add_argument("--poll-interval", type=float, default=None, help="seconds between check-ins (default 60)")
    run.add_argument("--fl-data", type=Path, default=None,
                     help="local training data (.npz with x and integer y): take part in federated rounds")
    run.add_argument("--conditions", type=Path, default=None,
                     help='JSON eligibility facts, re-read at every check-in: {"charging": true, "idle": true, '
                          '"wifi": true} (default: all true)')
    run.add_argument("--fl-min-time-s", type=float, default=None,
                     help="do not start training with less time left before a round's deadline (default 5)")
    run.add_argument("--fl-epochs", type=int, default=None, help="local training epochs per round (default 30)")
    run.set_defaults(func=_run)

    st = add_command(dsub, "status", "show the agent's state: enrollment, active version, queued reports",
                     "edgepack device status --state state/ --json")
    st.add_argument("--state", required=True, type=Path)
    st.set_defaults(func=_status)


def _pin(state: Path, args: argparse.Namespace) -> None:
    """Copy first-run trust anchors into ``state`` (never overwrite a pinned one)."""
    state.mkdir(parents=True, exist_ok=True)
    given = {"trust": args.trust, "update_trust": args.update_trust or args.trust, "tuf_root": args.tuf_root}
    for field, src in given.items():
        dst = state / PINNED[field]
        if src is None or dst.exists():
            continue
        if field != "tuf_root":
            load_trust(src)  # refuse a malformed trust file before pinning it
        tmp = dst.with_name(f".{dst.name}.tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    missing = [f"--{f.replace('_', '-')}" for f in PINNED if not (state / PINNED[f]).exists()]
    if missing:
        raise UsageError(f"first run needs {', '.join(missing)}", where=str(state),
                         hint="pass the release trust file and the fleet's TUF 1.root.json once")


def _run(args: argparse.Namespace) -> int:
    from runtime import InstallStore
    from runtime.agent import Agent, AgentConfig, StoreInstaller, load_local_data

    state: Path = args.state
    _pin(state, args)
    if args.fl_data is not None:
        load_local_data(args.fl_data)  # a bad data file is a one-line DataError now, not a warning per check-in
    trust = load_trust(state / PINNED["trust"])
    store = InstallStore(state / "store", trust, update_trust=load_trust(state / PINNED["update_trust"]))
    config = AgentConfig.from_env(
        poll_interval_s=args.poll_interval, fl_min_time_s=args.fl_min_time_s, fl_epochs=args.fl_epochs,
        fl_data=str(args.fl_data.resolve()) if args.fl_data else None,
        conditions_file=str(args.conditions.resolve()) if args.conditions else None)
    agent = Agent(state, args.server, StoreInstaller(store), trust, (state / PINNED["tuf_root"]).read_bytes(),
                  config=config)
    if not agent.state.device_id:
        if not args.enroll_token:
            raise UsageError("this device is not enrolled", where=str(state),
                             hint="pass --enroll-token from 'POST /api/v1/admin/enrollment-tokens'")
        agent.enroll(args.enroll_token, args.name)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    steps = agent.run(max_steps=args.max_steps, stop=stop)
    result = _summary(agent, steps)
    emit(args, result, f"device {result['device_id']}: v{result['active_version']} active after {steps} "
                       f"check-in(s), {result['queued_reports']} report(s) queued")
    return 0


def _summary(agent: Any, steps: int | None = None) -> dict[str, Any]:
    return {"device_id": agent.state.device_id, "group": agent.state.group,
            "active_version": agent.installer.active_version(), "pending": agent.state.pending,
            "failed_versions": agent.state.failed_versions, "consecutive_failures": agent.state.consecutive_failures,
            "queued_reports": len(agent.outbox), "steps": steps, "last_delivery": agent.last_delivery,
            "last_round": agent.participant.last if agent.participant else None}


def _last_round(state: Path) -> Any:
    """The last federated round outcome the agent recorded (``fl-rounds.json``), if any."""
    import json

    from runtime.agent._participant import ROUNDS_FILE

    try:
        return json.loads((state / ROUNDS_FILE).read_text()).get("last")
    except (OSError, ValueError, AttributeError):
        return None


def _status(args: argparse.Namespace) -> int:
    from runtime import InstallStore
    from runtime.agent import AgentState, Outbox

    state: Path = args.state
    st = AgentState.load(state)
    active = None
    if (state / PINNED["trust"]).exists():
        rec = InstallStore(state / "store", load_trust(state / PINNED["trust"])).active()
        active = rec.version if rec else None
    result = {"device_id": st.device_id, "group": st.group, "server": st.server, "active_version": active,
              "pending": st.pending, "failed_versions": st.failed_versions,
              "consecutive_failures": st.consecutive_failures, "last_contact": st.last_contact,
              "queued_reports": len(Outbox(state / "outbox")), "last_round": _last_round(state)}
    emit(args, result, "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0
