"""Telemetry as a privacy property (docs/threat-model.md, "read telemetry"): neither the runtime's
telemetry snapshot nor the telemetry report the agent sends to the fleet server holds a model input
or output, in any text or byte form, and neither grows with the number of predictions."""

from __future__ import annotations

import base64
import json

import numpy as np
from sqlalchemy import select

from fleet_server._models import Report

from .test_params_delta import N_IN, install_wide_v1, wide_onnx  # noqa: F401  (fixture)


def _forms(values: np.ndarray, digits: int) -> set[str]:
    """Every way a float could be written into JSON: rounded, float64 repr, float32 str, raw bytes."""
    out = set()
    for v in np.asarray(values, np.float32).reshape(-1):
        out |= {f"{float(v):.{digits}g}", repr(float(v)), str(v), v.tobytes().hex(), v.tobytes().hex().upper()}
    return out


def _byte_forms(x: np.ndarray) -> set[str]:
    return {f(row.tobytes()) for row in np.atleast_2d(x) for f in (lambda b: b.hex(), lambda b: base64.b64encode(b)
                                                                     .decode(), lambda b: b[:12].hex())}


def _leaks(text: str, forms: set[str]) -> list[str]:
    return sorted(f for f in forms if f in text)


def _distinctive_inputs(n: int, seed: int) -> np.ndarray:
    # 7000..9000 with every digit significant: no latency bucket edge (…5623.41, 10000 ms) starts so
    return (7000 + 2000 * np.random.default_rng(seed).random((n, N_IN))).astype(np.float32)


def _reports(env, device_id: str) -> list[Report]:
    with env.fleet.db.read() as s:
        return list(s.scalars(select(Report).where(Report.device_id == device_id, Report.kind == "telemetry")
                              .order_by(Report.id)))


def test_the_snapshot_and_the_agents_telemetry_report_hold_no_input_or_output(
        fleet_env, make_agent, wide_onnx, release_keys, tmp_path):  # noqa: F811  (fixture)
    agent, _, _, _ = install_wide_v1(fleet_env, make_agent, wide_onnx, release_keys, tmp_path)
    model = agent.installer.model()
    xs = [_distinctive_inputs(1, 1), _distinctive_inputs(4, 2)]  # one alone (its own min, max, mean), and a batch
    ys = [model.predict(x) for x in xs]
    assert model.telemetry.calls == 2 and model.telemetry.samples == 5  # the predictions were recorded
    secret = _forms(np.concatenate([x.reshape(-1) for x in xs]), 6) | _byte_forms(np.vstack(xs))
    secret |= _forms(np.concatenate([y.reshape(-1) for y in ys]), 7) | _byte_forms(np.vstack(ys))

    snap = json.dumps(model.telemetry.snapshot())
    assert not _leaks(snap, secret), f"the telemetry snapshot holds inputs/outputs: {_leaks(snap, secret)[:5]}"
    agent._last_telemetry = 0.0  # report now, not after telemetry_interval_s
    agent.step()
    sent = _reports(fleet_env, agent.state.device_id)
    assert sent and sent[-1].data["calls"] == 2, "the agent sent no telemetry report for these predictions"
    text = json.dumps([r.data for r in sent])
    assert not _leaks(text, secret), f"the agent's telemetry report holds inputs/outputs: {_leaks(text, secret)[:5]}"


def test_the_snapshot_and_the_report_do_not_grow_with_the_number_of_predictions(
        fleet_env, make_agent, wide_onnx, release_keys, tmp_path):  # noqa: F811  (fixture)
    agent, _, _, _ = install_wide_v1(fleet_env, make_agent, wide_onnx, release_keys, tmp_path)
    model = agent.installer.model()
    sizes = []
    for n in (3, 3000):
        for i in range(n - model.telemetry.calls):
            model.predict(_distinctive_inputs(1, 100 + i))
        agent._last_telemetry = 0.0
        agent.step()
        sent = _reports(fleet_env, agent.state.device_id)[-1]
        assert sent.data["calls"] == n
        sizes.append((len(json.dumps(model.telemetry.snapshot())), len(json.dumps(sent.data))))
    (snap_small, sent_small), (snap_big, sent_big) = sizes
    assert snap_big <= snap_small + 64 and sent_big <= sent_small + 64, sizes  # only counter digits grow


def test_output_moments_are_withheld_until_enough_values_that_they_cannot_be_solved_back(
        fleet_env, make_agent, wide_onnx, release_keys, tmp_path):  # noqa: F811  (fixture)
    from runtime import Telemetry

    agent, _, _, _ = install_wide_v1(fleet_env, make_agent, wide_onnx, release_keys, tmp_path)
    m = agent.installer.model()
    tel = Telemetry(m.io, name="wide", version=1, artifact="a", backend="onnx")
    tel.observe_output(np.array([[7345.125]], np.float32))  # one value is its own mean
    tel.observe_output(np.array([[8123.5]], np.float32))  # two are mean +- std
    assert tel.snapshot()["predictions"] == {"kind": "moments", "count": 2, "mean": None, "std": None}
    for v in range(tel.config.min_values_for_moments - 2):
        tel.observe_output(np.array([[float(v)]], np.float32))
    preds = tel.snapshot()["predictions"]
    assert preds["count"] == tel.config.min_values_for_moments and preds["mean"] is not None
