"""Drive a simulation: a local fleet, N device processes, R rounds, one row per round.

Each round goes the whole production path: the server picks the cohort from the
devices' reported eligibility, the agents download the global parameters, train
on their own non-IID data and upload int8-compressed, signed updates; the server
folds them, evaluates the candidate against the champion on its held-out set
(through the runtime's onnxruntime backend), signs a promoted candidate with the
fleet's federated key and rolls it out in health-gated waves; the agents install
it through TUF, and the next round trains on it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import ConfigError
from ._data import digits_bundle, initial_weights, split_digits
from ._devices import DeviceProcess
from ._errors import SimulationError
from ._fleet import LocalFleet

__all__ = ["CODECS", "RoundRow", "SimulationConfig", "SimulationResult", "simulate"]

CODECS = ("none", "int8", "topk")


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. ``threshold``: accuracy a candidate may lose and still be promoted."""

    devices: int = 4
    rounds: int = 5
    seed: int = 0
    codec: str = "int8"
    epochs: int = 30
    threshold: float = 0.0
    round_deadline_s: float = 120.0
    step_timeout_s: float = 180.0
    poll_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= 32:
            raise ConfigError("devices must be 1..32 (each is a real process)", where="--devices")
        if not 1 <= self.rounds <= 100:
            raise ConfigError("rounds must be 1..100", where="--rounds")
        if self.codec not in CODECS:
            raise ConfigError(f"codec must be one of {CODECS}", where="--codec")
        if self.epochs < 1 or self.round_deadline_s <= 10 or self.step_timeout_s <= 0 or self.poll_interval_s <= 0:
            raise ConfigError("epochs >= 1, round deadline > 10 s, positive timeouts", where="SimulationConfig")


@dataclass
class RoundRow:
    round: int
    round_id: str | None
    state: str
    participants: int
    accepted: int
    rejected: int
    champion_accuracy: float | None
    candidate_accuracy: float | None
    promoted: bool
    version: int                 # the model version serving after this round
    accuracy: float | None       # the global model's accuracy after this round
    seconds: float
    rejections: list[str] = field(default_factory=list)


@dataclass
class SimulationResult:
    config: SimulationConfig
    url: str
    root: str
    initial_accuracy: float
    rows: list[RoundRow]
    device_samples: list[int]
    dominant_classes: list[list[int]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["final_accuracy"] = self.rows[-1].accuracy if self.rows else None
        return d


Progress = Callable[[str], None]


def _wait(what: str, check: Callable[[], Any], timeout_s: float, devices: list[DeviceProcess],
          interval_s: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        for d in devices:
            d.check_alive()
        time.sleep(interval_s)
    raise SimulationError(f"timed out after {timeout_s:.0f} s waiting for {what}",
                          hint="the machine may be overloaded; the device logs are under devices/*/agent.log")


def _wait_rollout(fleet: LocalFleet, rollout_id: int, version: int, n: int, cfg: SimulationConfig,
                  devices: list[DeviceProcess]) -> None:
    def done() -> bool:
        ro = fleet.call("GET", f"/rollouts/{rollout_id}")
        if ro["state"] in ("rolled_back", "aborted"):
            raise SimulationError(f"rollout {rollout_id} of v{version} ended {ro['state']}: {ro.get('reason')}")
        devs = fleet.call("GET", "/devices")["devices"]
        return ro["state"] == "completed" and sum(d["active_version"] == version for d in devs) >= n

    _wait(f"every device to run v{version}", done, cfg.step_timeout_s, devices)


def _round(fleet: LocalFleet, cfg: SimulationConfig, i: int, version: int, eval_path: Path,
           devices: list[DeviceProcess], progress: Progress) -> tuple[RoundRow, int]:
    t0 = time.monotonic()
    n = len(devices)
    plan = {"group": "default", "waves": [50, 100] if n > 1 else [100], "gates": {"min_reports": n}}
    r = fleet.call("POST", "/rounds", {
        "model": "digits", "base_version": version, "params": ["W", "b"], "fraction": 1.0, "min_clients": n,
        "quorum": max(1, math.ceil(n / 2)), "deadline_s": cfg.round_deadline_s, "codecs": [cfg.codec],
        "evaluation": {"path": str(eval_path), "threshold": cfg.threshold}, "rollout": plan})
    rid = r["id"]
    progress(f"round {i}: {rid} on v{version}, {len(r['selected'])} device(s) selected")

    def answered() -> dict[str, Any] | None:
        st = fleet.call("GET", f"/rounds/{rid}")
        got = {u["device_id"] for u in st["accepted"]} | {u["device_id"] for u in st["rejected"]}
        return st if st["state"] != "open" or got >= set(st["selected"]) else None

    st = _wait(f"the updates of round {i}", answered, cfg.round_deadline_s + 30, devices, interval_s=0.5)
    if st["state"] == "open":
        st = fleet.call("POST", f"/rounds/{rid}/close")  # everyone answered: no need to wait for the deadline
    res = st.get("result") or {}
    promoted = bool(res.get("promoted")) and isinstance(res.get("release"), dict)
    progress(f"round {i}: {st['state']}, {len(st['accepted'])} accepted, {len(st['rejected'])} rejected, "
             f"candidate {res.get('candidate_accuracy', float('nan')):.4f} vs champion "
             f"{res.get('champion_accuracy', float('nan')):.4f}" + (", promoted" if promoted else ""))
    if promoted:
        if not isinstance(res.get("rollout"), dict):
            raise SimulationError(f"round {rid} was promoted but its rollout did not start: {st.get('reason')}")
        version = int(res["release"]["version"])
        _wait_rollout(fleet, int(res["rollout"]["id"]), version, n, cfg, devices)
        progress(f"round {i}: v{version} rolled out to {n} device(s)")
    acc = res.get("candidate_accuracy") if promoted else res.get("champion_accuracy")
    row = RoundRow(i, rid, st["state"], len(st["selected"]), len(st["accepted"]), len(st["rejected"]),
                   res.get("champion_accuracy"), res.get("candidate_accuracy"), promoted, version, acc,
                   time.monotonic() - t0, [f"{x['device_id']}: {x['reason']}" for x in st["rejected"]])
    return row, version


def _accuracy(bundle: Path, key: Any, x: np.ndarray, y: np.ndarray) -> float:
    from edgepack import Trust, verify_bundle
    from fleet_server._rounds_promote import evaluate_accuracy

    vb = verify_bundle(bundle, Trust.of([key.public]), keep_members=True)
    return evaluate_accuracy(vb.member("artifacts/model.onnx"), x, y, "model.onnx")


def simulate(cfg: SimulationConfig, root: Path, *, progress: Progress = lambda s: None,
             on_row: Callable[[RoundRow], None] = lambda r: None,
             on_start: Callable[[float], None] = lambda a: None,
             serve: Callable[[LocalFleet, SimulationResult], None] | None = None) -> SimulationResult:
    """Run the simulation under ``root`` (a fresh directory); stop every process it started.

    ``on_start`` gets the first model's accuracy on the held-out set (measured the way the
    server measures candidates), ``on_row`` each round's row as it finishes; ``serve``, if
    given, is called with the fleet still running after the last round.

    Raises:
        SimulationError: a process did not start, a step timed out, or the server refused a request.
    """
    t_start = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    splits = split_digits(cfg.devices, cfg.seed)
    fleet = LocalFleet(root)
    release_key = fleet.init()
    np.savez(root / "eval.npz", x=splits.eval_x, y=splits.eval_y)
    W, b = initial_weights(splits.seed_x, splits.seed_y)
    bundle = digits_bundle(W, b, release_key, root / "digits-1.edgepack", splits.eval_x[:4])
    devices = [DeviceProcess(fleet, i, x, y, epochs=cfg.epochs, poll_interval_s=cfg.poll_interval_s)
               for i, (x, y) in enumerate(splits.devices)]
    try:
        progress(f"starting the fleet server ({root / 'server.log'})")
        fleet.start()
        rel = fleet.call("POST", "/releases", bundle.read_bytes())
        progress(f"fleet at {fleet.url}; released digits v1; starting {cfg.devices} device agent(s)")
        for d in devices:
            d.start(fleet.call("POST", "/enrollment-tokens", {"group": "default"})["token"])
        _wait(f"{cfg.devices} device(s) to enroll and report eligibility",
              lambda: sum(bool(x["state"]) for x in fleet.call("GET", "/devices")["devices"]) >= cfg.devices,
              cfg.step_timeout_s, devices)
        ro = fleet.call("POST", "/rollouts", {"release": rel["id"], "group": "default", "waves": [100],
                                              "gates": {"min_reports": cfg.devices}})
        _wait_rollout(fleet, int(ro["id"]), 1, cfg.devices, cfg, devices)
        progress(f"{cfg.devices} device(s) run digits v1")
        initial = _accuracy(bundle, release_key, splits.eval_x, splits.eval_y)
        on_start(initial)
        rows: list[RoundRow] = []
        version = 1
        for i in range(1, cfg.rounds + 1):
            row, version = _round(fleet, cfg, i, version, root / "eval.npz", devices, progress)
            rows.append(row)
            on_row(row)
        result = SimulationResult(cfg, fleet.url, str(root), initial, rows, [d.samples for d in devices],
                                  splits.dominant, time.monotonic() - t_start)
        for d in devices:
            d.stop()
        if serve is not None:
            serve(fleet, result)
        return result
    finally:
        for d in devices:
            d.stop()
        fleet.stop()
