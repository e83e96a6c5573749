"""The device side of a federated round: fetch the assignment, train, compress, sign, upload.

Runs only what the device already has: the runtime's trainer (``runtime.train_local``
on the installed model), ``edgepack.federated`` (numpy + cryptography) for the
compressed, signed update, and the agent's signed HTTP. The error-feedback
residual of lossy codecs stays on the device (``fl-feedback.state``), so what a
codec drops in one round is sent in the next.
"""

from __future__ import annotations

import base64
import time
import urllib.error
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np

from edgepack import SigningKey
from edgepack._device_auth import sign_request
from edgepack.federated import CompressionConfig, ErrorFeedback, compress, encode_update

from .._train import TrainConfig, train_local
from ._errors import ServerRefusedError
from ._http import FleetClient, open_url

__all__ = ["FEEDBACK_FILE", "participate"]

FEEDBACK_FILE = "fl-feedback.state"


def _decode_params(doc: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name, t in doc.items():
        a = np.frombuffer(base64.b64decode(t["data"]), dtype=np.dtype(t["dtype"]).newbyteorder("<"))
        out[name] = a.astype(t["dtype"]).reshape(t["shape"])
    return out


def participate(api: FleetClient, device_id: str, key: SigningKey, state_dir: str | Path, model: Any,
                inputs: Any, labels: np.ndarray, *, conditions: Callable[[], dict[str, bool]],
                trainer: str = "numpy", train_config: TrainConfig | None = None, min_time_s: float = 5.0,
                now: Callable[[], float] = time.time, skip_rounds: Collection[str] = ()) -> dict[str, Any]:
    """Take part in the round this device is selected for, if any; return what happened.

    ``status`` is ``no_round``, ``answered`` (the round is in ``skip_rounds``: this device
    already had the server's answer for it), ``skipped`` (not eligible now, too close to the
    deadline, or another base model than the one installed), ``uploaded`` or ``rejected``
    (with the server's reason). ``train_s`` is how long local training took.

    Raises:
        ServerUnreachableError: the server cannot be reached (the agent retries later).
        ServerRefusedError: the server refused the assignment request itself.
        TrainingError: local training failed.
    """
    _, doc = api.call("GET", f"/api/v1/devices/{device_id}/round", key=key, device_id=device_id)
    rnd = (doc or {}).get("round")
    if not rnd:
        return {"status": "no_round"}
    rid = rnd["round_id"]
    if rid in skip_rounds:
        return {"status": "answered", "round_id": rid}
    state = conditions()
    unmet = sorted(k for k, v in (rnd.get("eligibility") or {}).items() if state.get(k) is not v)
    if unmet:  # conditions may have changed since the heartbeat that got us selected
        return {"status": "skipped", "round_id": rid, "reason": f"not eligible now: {unmet}"}
    if rnd["deadline_at"] - now() < min_time_s:
        return {"status": "skipped", "round_id": rid, "reason": "too close to the deadline"}
    if getattr(model, "version", None) != rnd["base_version"] or getattr(model, "name", None) != rnd["model"]:
        return {"status": "skipped", "round_id": rid,
                "reason": f"installed model is not {rnd['model']} v{rnd['base_version']}"}
    global_params = _decode_params(rnd["params"])
    t0 = time.monotonic()
    upd = train_local(model, inputs, labels, trainer=trainer, config=train_config)
    train_s = time.monotonic() - t0
    delta = {n: (np.asarray(upd.weights[n], np.float64) - g.astype(np.float64)).astype(g.dtype)
             for n, g in global_params.items()}
    if rnd["deadline_at"] - now() < 1.0:
        return {"status": "skipped", "round_id": rid, "reason": "training ran past the deadline", "train_s": train_s}
    codec = (rnd.get("codecs") or ["none"])[0]
    fb_path = Path(state_dir) / FEEDBACK_FILE
    feedback = ErrorFeedback.load(fb_path) if fb_path.exists() and codec != "none" else ErrorFeedback()
    tensors = compress(delta, CompressionConfig(codec), feedback=feedback if codec != "none" else None)
    blob = encode_update(key, round_id=rid, base_version=rnd["base_version"], device_id=device_id,
                         num_samples=upd.num_samples, tensors=tensors,
                         metrics={k: float(v) for k, v in upd.metrics.items()})
    status, body = _post_blob(api, key, device_id, f"/api/v1/devices/{device_id}/rounds/{rid}/update", blob)
    if status == 200 and codec != "none":
        fb_path.parent.mkdir(parents=True, exist_ok=True)
        feedback.save(fb_path)  # only once the server counted it: a lost upload is retried from the same residual
    out = {"status": "uploaded" if status == 200 else "rejected", "round_id": rid, "bytes": len(blob),
           "num_samples": upd.num_samples, "metrics": upd.metrics, "train_s": train_s, "codec": codec}
    if status != 200:
        out["reason"] = body.get("reason")
    return out


def _post_blob(api: FleetClient, key: SigningKey, device_id: str, path: str, blob: bytes) -> tuple[int, Any]:
    import json

    headers = {"Content-Type": "application/octet-stream", "Accept": "application/json",
               **sign_request(key, device_id, "POST", api._prefix + path, blob, now=api.now())}
    try:
        with open_url(api.base + path, headers, timeout=api.timeout, method="POST", body=blob) as resp:
            return resp.status, json.loads(resp.read(1 << 20) or b"{}")
    except urllib.error.HTTPError as e:
        raw = e.read(1 << 16)
        e.close()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = {}
        if e.code == 422 and "reason" in doc:
            return e.code, doc
        raise ServerRefusedError(f"round upload refused: {doc.get('message', e.reason)}", status=e.code,
                                 where=path) from e
