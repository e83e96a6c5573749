"""What the agent loop needs for federated rounds: local data, eligibility facts, and memory.

``RoundParticipant.step`` is called once per check-in, after delivery (so a
parameter release that a promoted round just rolled out is installed before
the next round trains on it). It keeps on disk (``fl-rounds.json``) the rounds
this device already has an answer for, so a rejected update is not retrained
every check-in, and how long training took last time, so a round is not
started when it could not finish before its deadline. The error-feedback
residual lives in ``fl-feedback.state`` (see ``_federated``); both survive restarts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgepack import DataError, EdgepackError, SigningKey
from edgepack._atomic import atomic_write

from .._errors import InstallError
from .._train import TrainConfig
from ._config import AgentConfig
from ._errors import ServerRefusedError, ServerUnreachableError
from ._federated import participate
from ._http import FleetClient

__all__ = ["ELIGIBILITY_FACTS", "ROUNDS_FILE", "RoundParticipant", "load_local_data", "read_conditions"]

log = logging.getLogger("edgepack.agent")
ROUNDS_FILE = "fl-rounds.json"
ELIGIBILITY_FACTS = ("charging", "idle", "wifi")
_KEEP = 200  # answered round ids remembered (a round is never offered again once closed)


def read_conditions(path: str | Path) -> dict[str, bool]:
    """The device's eligibility facts from a JSON file its OS keeps up to date.

    A missing or malformed file, or a fact that is not a boolean, counts as *not* met
    (the safe side: a device that cannot tell whether it is charging does not train).
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        log.warning("cannot read the conditions file %s (%s); reporting no eligibility facts", path, e)
        return {}
    if not isinstance(doc, dict):
        return {}
    return {k: doc[k] for k in ELIGIBILITY_FACTS if isinstance(doc.get(k), bool)}


def load_local_data(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (float32) and ``y`` (integer labels) from a local ``.npz``.

    Raises:
        DataError: unreadable, no ``x``/``y``, pickled objects, non-integer or mismatched labels, NaN/Inf.
    """
    try:
        with np.load(path, allow_pickle=False) as d:
            x, y = np.asarray(d["x"]), np.asarray(d["y"])
    except KeyError as e:
        raise DataError(f"local data has no array {e}", where=str(path), hint="save it with np.savez(path, x=..., y=...)") from e
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read local data: {e}", where=str(path),
                        hint="an .npz with arrays x and y (no pickled objects)") from e
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != len(x) or len(y) == 0:
        raise DataError(f"y must be 1-D integer labels, one per row of x (x {x.shape}, y {y.shape} {y.dtype})",
                        where=str(path))
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError("x holds NaN or Inf", where=str(path))
    return x, y


class RoundParticipant:
    """The agent's federated side, bound to one state directory and one local data file."""

    def __init__(self, state_dir: Path, config: AgentConfig) -> None:
        if not config.fl_data:
            raise DataError("no local data configured", where="AgentConfig.fl_data", hint="pass --fl-data FILE.npz")
        self.dir, self.config = Path(state_dir), config
        self._data: tuple[np.ndarray, np.ndarray] | None = None
        self._memory = self._load_memory()
        self._dirty = False
        self.last: dict[str, Any] | None = self._memory["last"]

    def _load_memory(self) -> dict[str, Any]:
        try:
            doc = json.loads((self.dir / ROUNDS_FILE).read_text())
            if isinstance(doc, dict) and isinstance(doc.get("answered"), list):
                return {"answered": [str(r) for r in doc["answered"]][-_KEEP:],
                        "last_train_s": float(doc.get("last_train_s") or 0.0),
                        "last": doc.get("last") if isinstance(doc.get("last"), dict) else None}
        except (OSError, ValueError, TypeError):
            pass  # first run, or a damaged file: worst case one extra round is offered and refused
        return {"answered": [], "last_train_s": 0.0, "last": None}

    def _save_memory(self) -> None:
        atomic_write(self.dir / ROUNDS_FILE, json.dumps(self._memory, sort_keys=True).encode())

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        if self._data is None:
            self._data = load_local_data(self.config.fl_data or "")
        return self._data

    def step(self, api: FleetClient, device_id: str, key: SigningKey, installer: Any,
             conditions: Any) -> dict[str, Any]:
        """One look at the rounds; returns what happened (also kept as ``last``).

        Raises:
            ServerUnreachableError, ServerRefusedError: the agent's check-in backs off as usual.
        """
        try:
            out = self._step(api, device_id, key, installer, conditions)
        except (ServerUnreachableError, ServerRefusedError):
            raise
        except EdgepackError as e:  # bad local data, training failed: keep serving, say why
            log.warning("federated round: %s", e.one_line())
            out = {"status": "error", "reason": f"{type(e).__name__}: {e.message}"}
        if out["status"] not in ("no_round", "answered"):
            self.last = out
            log.info("federated round %s: %s %s", out.get("round_id"), out["status"], out.get("reason") or "")
            if out != self._memory["last"]:
                self._memory["last"] = out  # for `edgepack device status`
                self._dirty = True
        if self._dirty:
            self._save_memory()
            self._dirty = False
        return out

    def _step(self, api: FleetClient, device_id: str, key: SigningKey, installer: Any,
              conditions: Any) -> dict[str, Any]:
        model_of = getattr(installer, "model", None)
        if model_of is None or installer.active_version() is None:
            return {"status": "no_round"}  # nothing installed to train yet; the delivery comes first
        try:
            model = model_of()
        except InstallError:
            return {"status": "no_round"}
        x, y = self.data()
        min_time = max(self.config.fl_min_time_s, 2.0 * self._memory["last_train_s"])
        out = participate(api, device_id, key, self.dir, model, x, y, conditions=conditions,
                          train_config=TrainConfig(epochs=int(self.config.fl_epochs)), min_time_s=min_time,
                          skip_rounds=frozenset(self._memory["answered"]),
                          now=api.now)  # the clock requests are signed with (corrected by the server)
        if "train_s" in out:
            self._memory["last_train_s"] = float(out["train_s"])
            self._dirty = True
        if out["status"] in ("uploaded", "rejected"):
            self._memory["answered"] = [*self._memory["answered"], out["round_id"]][-_KEEP:]
            self._dirty = True
        return out
