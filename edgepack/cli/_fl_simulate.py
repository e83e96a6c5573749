"""``edgepack fl simulate``: N real device agents and a local fleet server run R federated rounds.

The orchestration is ``edgepack.flsim``; this module only parses flags and prints
the table (one row per round as it finishes) and where to see the dashboard.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from .._errors import ConfigError, UsageError
from . import add_command, emit

__all__ = ["add_simulate"]

COLUMNS = [("round", 5), ("participants", 12), ("accepted", 8), ("rejected", 8), ("candidate", 9), ("accuracy", 8),
           ("model", 14)]


def add_simulate(fsub: argparse._SubParsersAction) -> None:
    sim = add_command(fsub, "simulate", "run N real device agents against a local fleet server for R rounds",
                      "edgepack fl simulate --devices 4 --rounds 5",
                      description="Start a fleet server on 127.0.0.1 and N device agent processes, each holding a "
                                  "non-IID share of the digits data; run R federated rounds (train, compress, sign, "
                                  "validate, champion/challenger, signed release, health-gated rollout) and print "
                                  "the global accuracy after each round.")
    sim.add_argument("--devices", type=int, default=4, help="device agent processes (default 4)")
    sim.add_argument("--rounds", type=int, default=5, help="rounds to run (default 5)")
    sim.add_argument("--seed", type=int, default=0, help="seed of the data split and the first model (default 0)")
    sim.add_argument("--codec", default="int8", help="update compression: none, int8 or topk (default int8)")
    sim.add_argument("--epochs", type=int, default=30, help="local training epochs per round (default 30)")
    sim.add_argument("--threshold", type=float, default=0.0,
                     help="accuracy a candidate may lose against the champion and still be promoted (default 0)")
    sim.add_argument("--out", type=Path, default=None,
                     help="keep the fleet (instance, keys, logs) in this new directory (default: a temp dir, removed)")
    sim.add_argument("--serve", action="store_true",
                     help="after the last round keep the server up to browse the dashboard (Ctrl-C stops it)")
    sim.set_defaults(func=_simulate)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _line(cells: list[Any]) -> str:
    *nums, model = [_fmt(c) for c in cells]
    return "  ".join([*(c.rjust(w) for c, (_, w) in zip(nums, COLUMNS, strict=False)), model])


def _progress(msg: str) -> None:
    from .._term import _enabled

    if _enabled():
        print(f"… {msg}", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _simulate(args: argparse.Namespace) -> int:
    from ..flsim import SimulationConfig, simulate

    try:
        cfg = SimulationConfig(devices=args.devices, rounds=args.rounds, seed=args.seed, codec=args.codec,
                               epochs=args.epochs, threshold=args.threshold)
    except ConfigError as e:
        raise UsageError(e.message, where=e.where, hint="see 'edgepack fl simulate --help'") from e
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        raise UsageError(f"{args.out} is not empty", where="--out", hint="name a new or empty directory")
    root = args.out.resolve() if args.out else Path(tempfile.mkdtemp(prefix="edgepack-flsim-"))
    as_json = getattr(args, "json", False)

    def on_row(row: Any) -> None:
        if not as_json:
            model = f"v{row.version}" + (" promoted" if row.promoted else f" kept ({row.state})")
            print(_line([row.round, row.participants, row.accepted, row.rejected, row.candidate_accuracy,
                         row.accuracy, model]), flush=True)

    def on_start(initial: float | None) -> None:
        if not as_json:
            print(_line([name for name, _ in COLUMNS]), flush=True)
            print(_line([0, None, None, None, None, initial, "v1 initial"]), flush=True)

    def serve(fleet: Any, result: Any) -> None:
        last = result.rows[-1].round_id if result.rows else ""
        print(f"dashboard: {fleet.url}/rounds/{last} (log in with the admin token in {root / 'admin-token'}); "
              "Ctrl-C stops the server", file=sys.stderr, flush=True)
        try:
            fleet.wait()
        except KeyboardInterrupt:
            print("", file=sys.stderr)

    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM ends the run like Ctrl-C: the finally blocks stop every process and remove the temp dir
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = simulate(cfg, root, progress=_progress, on_row=on_row, on_start=on_start,
                          serve=serve if args.serve else None)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    rows = result.rows
    first, last = result.initial_accuracy, rows[-1].accuracy if rows else None
    where = (f"the fleet is kept in {root}: 'edgepack fleet serve --instance {root / 'instance'}' and open "
             f"http://127.0.0.1:8080/rounds (admin token in {root / 'admin-token'})" if args.out else
             "add --out DIR to keep the fleet, or --serve to browse the dashboard's round pages")
    emit(args, result.to_dict(),
         f"global accuracy {_fmt(first)} -> {_fmt(last)} over {len(rows)} round(s), {cfg.devices} device(s), "
         f"{result.seconds:.0f} s\n{where}")
    return 0
