"""The device side of a federated round: fetch the assignment, train, compress, sign, upload.

Runs only what the device already has: the runtime's trainer (``runtime.train_local``
on the installed model), ``edgepack.federated`` (numpy + cryptography) for the
compressed, signed update, and the agent's signed HTTP. The error-feedback
residual of lossy codecs stays on the device (``fl-feedback.state``), so what a
codec drops in one round is sent in the next.
"""

from __future__ import annotations

import base64
import re
import time
import urllib.error
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np

from edgepack import EdgepackError, SigningKey
from edgepack._device_auth import sign_request
from edgepack._weights import read_weights
from edgepack.federated import CompressionConfig, ErrorFeedback, compress, encode_update

from .._train import TrainConfig, train_local
from ._errors import ServerRefusedError
from ._http import FleetClient, open_url

__all__ = ["FEEDBACK_FILE", "participate"]

FEEDBACK_FILE = "fl-feedback.state"
_ROUND_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")  # it goes into the upload's URL path


def _malformed(rnd: Any) -> str | None:
    """Why a round assignment cannot be used (it is unsigned JSON), or None."""
    if not isinstance(rnd, dict):
        return "the round is not an object"
    fields = (("round_id", str), ("model", str), ("base_version", int), ("deadline_at", (int, float)))
    bad = [k for k, t in fields if not isinstance(rnd.get(k), t) or isinstance(rnd.get(k), bool)]
    if not isinstance(rnd.get("eligibility") or {}, dict) or not isinstance(rnd.get("codecs") or [], list):
        bad.append("eligibility/codecs")
    if not bad and not _ROUND_ID.match(rnd["round_id"]):
        bad.append("round_id")
    return f"malformed round assignment: {bad}" if bad else None


def _decode_params(doc: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name, t in doc.items():
        a = np.frombuffer(base64.b64decode(t["data"]), dtype=np.dtype(t["dtype"]).newbyteorder("<"))
        out[name] = a.astype(t["dtype"]).reshape(t["shape"])
    return out


def _verified_base(params: Any, model: Any) -> tuple[dict[str, np.ndarray] | None, str]:
    """The round's global params, as the installed model holds them; or (None, why not).

    The round assignment is plain JSON with no signature of its own (and no TLS by default),
    while the installed model was verified (release signature, TUF) before it was loaded. So
    the params are only a claim: they must name tensors of the installed artifact and equal
    them bit for bit, and the delta is taken against the verified copy.
    """
    try:
        offered = _decode_params(params)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # binascii.Error is a ValueError
        return None, f"malformed round parameters ({type(e).__name__}: {e})"
    try:
        base = read_weights(model.format, model.artifact_bytes, sorted(offered))
    except EdgepackError as e:
        return None, f"the installed model has no such parameters: {e.message}"
    for name, a in offered.items():
        b = base[name]
        if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b):
            return None, f"round parameter {name!r} differs from the installed, verified model"
    return base, ""


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
    why = _malformed(rnd)
    if why:
        return {"status": "skipped", "round_id": None, "reason": why}
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
    global_params, why = _verified_base(rnd.get("params"), model)
    if global_params is None:
        return {"status": "skipped", "round_id": rid, "reason": why}
    t0 = time.monotonic()
    upd = train_local(model, inputs, labels, trainer=trainer, config=train_config)
    train_s = time.monotonic() - t0
    untrained = sorted(set(global_params) - set(upd.weights))
    if untrained:
        return {"status": "skipped", "round_id": rid, "train_s": train_s,
                "reason": f"the installed model's local training does not change {untrained}"}
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
