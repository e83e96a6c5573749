"""Closing a round that met its quorum: the candidate, champion/challenger, signing and release.

The candidate is global + weighted mean delta (FedAvg, server learning rate 1).
Champion and candidate run through the runtime's own ONNX backend (the path a
device uses; no torch) on a server-side eval set; the candidate is promoted only
if it is not worse by more than the round's threshold, then signed with the
fleet's online federated key and recorded as a parameter-update release.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from edgepack import EdgepackError, load_signing_key
from edgepack._params import encode_param_update
from edgepack.federated import RoundAccumulator

from ._models import Release
from ._models_rounds import FLRound
from ._rounds import _base_artifacts, _global_params, round_dir

__all__ = ["evaluate_accuracy"]


def evaluate_accuracy(onnx: bytes, x: np.ndarray, y: np.ndarray, where: str) -> float:
    """Top-1 accuracy of an ONNX classifier on (x, y) through ``runtime``'s onnx backend.

    Raises:
        BackendError: onnxruntime cannot load the model.
    """
    from runtime._backends import BackendOptions, get_backend  # the device's own inference path

    sess = get_backend("onnx").load(onnx, {"path": where, "_n_inputs": 1, "_n_outputs": 1},
                                    BackendOptions(num_threads=1))
    logits = sess.run([x.astype(np.float32)])[0]
    return float((np.argmax(logits, axis=1) == y).mean())


def _federated_key(fleet: Any) -> Any:
    from ._publish import TUF_DIR

    p = Path(fleet.config.instance_dir) / TUF_DIR / "federated.key"
    return load_signing_key(p) if p.exists() else None


def _finish(fleet: Any, r: FLRound, acc: RoundAccumulator) -> tuple[str, dict[str, Any], str | None]:
    """Average, build the candidate, evaluate it against the champion, sign and store it if promoted."""
    base = _global_params(fleet, r)
    mean = acc.finalize()
    new = {k: (base[k].astype(np.float64) + mean[k]).astype(base[k].dtype) for k in base}
    with fleet.db.read() as s:
        rel = s.get(Release, r.base_release_id)
        s.expunge(rel)
        latest = s.scalar(select(Release.version).where(Release.name == r.model).order_by(Release.version.desc()))
    arts = _base_artifacts(fleet, rel)
    key = _federated_key(fleet)
    version = int(latest) + 1
    epu, rebuilt = encode_param_update(model=r.model, version=version, base_version=r.base_version,
                                       base_artifacts={r.artifact: ("onnx", arts[r.artifact])},
                                       new_weights={r.artifact: new}, keys=[key] if key else [])
    d = round_dir(fleet, r.id)
    tmp = d / "candidate.npz.tmp.npz"
    np.savez(tmp, **new)
    tmp.replace(d / "candidate.npz")
    result: dict[str, Any] = {"accepted": acc.count, "weight_sum": acc.weight_sum, "version": version,
                              "promoted": False, "release": None}
    ev = r.evaluation or {}
    if not ev:
        return "closed", result, "no evaluation set: candidate built but not promoted"
    data = np.load(ev["path"])
    x, y = data["x"], data["y"]
    champ = evaluate_accuracy(arts[r.artifact], x, y, r.artifact)
    cand = evaluate_accuracy(rebuilt[r.artifact], x, y, r.artifact)
    result.update(champion_accuracy=champ, candidate_accuracy=cand, threshold=ev["threshold"])
    if cand < champ - ev["threshold"]:
        return "closed", result, f"candidate {cand:.4f} is worse than champion {champ:.4f} by more than {ev['threshold']}"
    result["promoted"] = True
    if key is None:
        return "closed", result, "promoted, but this fleet has no federated key (tuf/federated.key) to sign it"
    (d / "candidate.epu.tmp").write_bytes(epu)
    (d / "candidate.epu.tmp").replace(d / "candidate.epu")
    result["release"] = "pending"  # stored after this transaction commits (see close_round)
    return "closed", result, None


@contextlib.contextmanager
def _publish_lock(fleet: Any, round_id: str) -> Iterator[None]:
    """One publisher per round at a time, across threads and worker processes (flock on the round's
    directory, which holds candidate.epu: the lock dies with a killed process, so a retry never waits)."""
    fd = os.open(round_dir(fleet, round_id) / "publish.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _stored_candidate(fleet: Any, epu: bytes) -> dict[str, Any] | None:
    """The release a previous attempt stored for this exact candidate (it crashed before recording it)."""
    from ._releases import release_dict

    with fleet.db.read() as s:
        row = s.scalar(select(Release).where(Release.kind == "params",
                                             Release.sha256 == hashlib.sha256(epu).hexdigest()))
        return None if row is None else {**release_dict(row), "delta": None}


def _publish(fleet: Any, round_id: str) -> None:
    """Record a promoted, signed candidate as a parameter-update release, then start the round's
    planned rollout, if any (each its own transactions; a "pending" marker makes both retryable).

    Every close and every status read of a closed round comes here while something is pending, so
    two can overlap (each worker's ticker, the dashboard): they take turns, and each re-reads the
    markers under the lock, so a step is done once and its result never overwritten by a duplicate.
    """
    with _publish_lock(fleet, round_id):
        _publish_locked(fleet, round_id)


def _publish_locked(fleet: Any, round_id: str) -> None:
    from ._param_releases import store_param_update
    from ._rounds_rollout import try_planned_rollout

    with fleet.db.read() as s:
        r = s.get(FLRound, round_id)
        base_id, result = r.base_release_id, dict(r.result or {})
        plan = (r.evaluation or {}).get("rollout")
    if result.get("release") == "pending":
        epu = (round_dir(fleet, round_id) / "candidate.epu").read_bytes()
        try:
            rel: Any = store_param_update(fleet, base_id, epu, None)
            reason = None
        except EdgepackError as e:
            rel, reason = _stored_candidate(fleet, epu), None
            if rel is None:
                reason = f"promoted and signed, but storing the release failed: {e.one_line()}"
        with fleet.db.write() as s:
            r = s.get(FLRound, round_id, with_for_update=True)
            r.result = {**r.result, "release": rel, **({"rollout": "pending"} if plan and rel else {})}
            r.reason = reason
            result = dict(r.result)
    if result.get("rollout") != "pending":
        return
    why = (f"round {round_id} promoted its candidate: accuracy {result['candidate_accuracy']:.4f} vs champion "
           f"{result['champion_accuracy']:.4f} (threshold {result['threshold']}) on the server's eval set")
    ro, reason = try_planned_rollout(fleet, round_id, int(result["release"]["id"]), plan, why)
    with fleet.db.write() as s:
        r = s.get(FLRound, round_id, with_for_update=True)
        r.result = {**r.result, "rollout": ro}
        r.reason = reason
