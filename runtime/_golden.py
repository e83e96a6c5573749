"""The health check: run the bundle's golden inputs, compare with its golden outputs.

Rule (documented in docs/runtime.md): an output passes when it is
``allclose(actual, expected, atol, rtol)`` with the golden block's tolerances,
OR (for quantized artifacts run on a different CPU, whose kernels may round
differently) when it is a 2-D score matrix whose argmax agrees on every sample
and whose cosine similarity to the expected values is >= 0.999.
Expected values are the artifact's own build-time outputs
(``<artifact file>__<output>``); if the bundle has none for this artifact, the
original model's ``out__<output>`` is used under the same rule.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import HealthCheckError

__all__ = ["HealthReport", "MIN_COSINE", "compare_outputs", "health_check"]

MIN_COSINE = 0.999


@dataclass
class HealthReport:
    ok: bool
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "outputs": self.outputs}


def compare_outputs(name: str, actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    """One output's verdict with the numbers behind it (plain JSON types)."""
    rec: dict[str, Any] = {"output": name, "ok": False, "rule": None}
    if actual.shape != expected.shape:
        rec["detail"] = f"shape {list(actual.shape)} != expected {list(expected.shape)}"
        return rec
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    if not np.all(np.isfinite(a)):
        rec["detail"] = "non-finite outputs"
        return rec
    rec["max_abs"] = float(np.max(np.abs(a - e))) if a.size else 0.0
    if np.allclose(a, e, atol=atol, rtol=rtol):
        rec.update(ok=True, rule="allclose")
        return rec
    if a.ndim == 2 and a.shape[1] > 1:
        agree = bool(np.all(a.argmax(1) == e.argmax(1)))
        denom = np.linalg.norm(a) * np.linalg.norm(e)
        cos = float(np.dot(a.ravel(), e.ravel()) / denom) if denom else 0.0
        rec.update(argmax_agree=agree, cosine=cos)
        if agree and cos >= MIN_COSINE:
            rec.update(ok=True, rule="argmax+cosine")
    return rec


def load_golden(data: bytes) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise HealthCheckError(f"golden data is not a readable npz: {e}", reason={"code": "golden_unreadable"}) from e


def health_check(model: Any, *, expected_override: dict[str, np.ndarray] | None = None) -> HealthReport:
    """Run ``model`` on its bundle's golden inputs and compare (see module docstring).

    ``expected_override`` (output name -> array) is for parameter updates: outputs
    it names are compared with it; outputs it omits only need the bundle's golden
    shape and finite values (the bundle's values were for the old weights).

    Raises:
        HealthCheckError: the bundle has no golden data, or it does not fit the model.
    """
    if model.golden_bytes is None:
        raise HealthCheckError("the bundle has no golden data to check against", reason={"code": "no_golden"},
                               hint="build the bundle with BundleBuilder.set_golden(...)")
    g = load_golden(model.golden_bytes)
    meta = model.manifest.golden
    atol, rtol = float(meta.get("atol", 1e-4)), float(meta.get("rtol", 1e-3))
    try:
        xs = [g[f"in__{s.name}"] for s in model.io.inputs]
    except KeyError as e:
        raise HealthCheckError(f"golden data lacks input {e.args[0]}", reason={"code": "golden_incomplete"}) from e
    outs = model.session.run(xs)
    fname = model.artifact.rsplit("/", 1)[-1]
    report = HealthReport(ok=True)
    for s, y in zip(model.io.outputs, outs, strict=True):
        exp = g.get(f"{fname}__{s.name}")
        if exp is None:
            exp = g.get(f"out__{s.name}")
        if expected_override is not None:
            if s.name in expected_override:
                exp = expected_override[s.name]
            elif exp is not None:
                # new weights, no signed expectations: demand the right shape and finite values
                ok = y.shape == exp.shape and bool(np.all(np.isfinite(y)))
                rec = {"output": s.name, "ok": ok, "rule": "shape+finite"}
                report.outputs.append(rec)
                report.ok = report.ok and ok
                continue
        if exp is None:
            rec = {"output": s.name, "ok": False, "detail": "no expected values in golden data"}
        else:
            rec = compare_outputs(s.name, np.asarray(y), exp, atol, rtol)
        report.outputs.append(rec)
        report.ok = report.ok and bool(rec["ok"])
    return report
