"""Compression inside ``build()``: run the recipe's pass sections on a torch
model before export, and hold the result to an accuracy budget against the
ORIGINAL model.

Why two checks: a distilled or pruned model is *meant* to differ from the
original, so fp32 ``max_abs`` against the teacher would fail every student.
Instead each artifact's numeric parity is checked against the COMPRESSED model
(the export and quantization are faithful, as in a plain build), and each
artifact's accuracy is checked against the ORIGINAL model's with the
``[compress] max_accuracy_drop`` budget (the compression was worth it).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from edgepack._term import step

from . import _data, _load, _onnx_eval, _tflite_eval
from ._artifacts import Artifact
from ._compress_errors import EvalDataRequiredError
from ._compress_pipeline import CompressData, attribution_table, run_compression
from ._errors import UnsupportedError
from ._passreport import PassReport
from ._recipe import Recipe
from ._runners import open_session, run_batched

__all__ = ["CompressionRun", "accuracy_failures", "active", "check_inputs", "compress", "pass_sections",
           "report_section", "runtime_figures", "search", "search_warning"]


@dataclasses.dataclass
class CompressionRun:
    """What ``compress`` did: the compressed model, one report per pass, and the original's eval figures."""

    model: _load.LoadedModel
    reports: list[PassReport]
    original_accuracy: float | None
    original_refs: np.ndarray
    sizes: dict[str, int]
    search: Any = None  # a _search.SearchResult under ``[build] search``
    #: the source model as loaded (untouched by the passes), for the per-runtime before/after figures
    source: Any = None


def active(rec: Recipe) -> bool:
    """Whether the build compresses at all: a pass section, or ``[build] search``."""
    return bool(pass_sections(rec)) or rec.build.search


def pass_sections(rec: Recipe) -> dict[str, Any]:
    """The pass sections ``build()`` runs (``[search]`` is a separate mode: ``edgepack build --search``)."""
    return {k: v for k, v in rec.compression().items() if k != "search"}


def check_inputs(rec: Recipe, m: _load.LoadedModel, eval_data: _data.Dataset | None,
                 train: _data.Dataset | None) -> _data.Dataset:
    """Fail early, before any training, when the passes cannot run; returns the training data.

    Raises:
        UnsupportedError: the source is not a torch model (the passes are torch-only).
        EvalDataRequiredError: no eval data (the accuracy budget needs real inputs) or no training data.
    """
    names = ", ".join([f"[{k}]" for k in pass_sections(rec)] + (["--search"] if rec.build.search else []))
    if m.kind != "torch":
        raise UnsupportedError(f"compression sections {names} need a torch model; this source is {m.kind}",
                               where=names, hint="remove the compression sections, or build from the torch model "
                                                 "(nn.Module, 'pkg.mod:factory' or .pt2)")
    if eval_data is None:
        raise EvalDataRequiredError(f"compression sections {names} need eval data: the accuracy budget against "
                                    "the original model cannot be checked on random inputs",
                                    where="--eval / [data] eval", hint="pass --eval DATA (.npz with x and y)")
    if train is None:
        raise EvalDataRequiredError(f"compression sections {names} need training data", where="[data] train",
                                    hint="set [data] train = 'train.npz' or pass --calibration DATA "
                                         "(the calibration data is used for training when no train data is given)")
    return train


def _torch_module(model: Any) -> Any:
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return model.module()  # the passes need parameters they can train
    # a deep copy: the pruning passes work in place, and the caller's model must stay the original
    return copy.deepcopy(model)


def _state_bytes(model: Any) -> int:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getvalue())


def compress(m: _load.LoadedModel, rec: Recipe, train: _data.Dataset, x_eval: np.ndarray,
             y_eval: np.ndarray | None, original_refs: np.ndarray) -> CompressionRun:
    """Run the pass sections in order on a copy of the source model.

    Raises:
        ConfigError, SparsityRangeError: bad pass settings.
        StudentMismatchError, StudentDerivationError, UnprunableLayerError: a pass cannot handle the model.
    """
    original = _torch_module(m.model)
    before = _state_bytes(original)
    data = CompressData(train.x, train.y, x_eval, y_eval)
    model, reports = original, list[PassReport]()
    if pass_sections(rec):
        with step("compress: " + " -> ".join(pass_sections(rec))):
            model, reports = run_compression(original, pass_sections(rec), data)
    model.eval()
    acc = None if y_eval is None else float((original_refs.argmax(-1) == np.asarray(y_eval)).mean())
    sizes = {"original_state_dict_bytes": before, "compressed_state_dict_bytes": _state_bytes(model)}
    return CompressionRun(dataclasses.replace(m, model=model), reports, acc, original_refs, sizes, source=m.model)


#: target -> fp32 export of a torch module, the same one for the original and the compressed model
_FP32_EXPORTS: dict[str, Callable[[Any, np.ndarray], bytes]] = {"onnx": _onnx_eval.export,
                                                                "tflite": _tflite_eval.export}


def runtime_figures(run: CompressionRun, rec: Recipe, x: np.ndarray,
                    artifacts: list[Artifact] | None = None) -> list[dict[str, Any]]:
    """fp32 file size and batch-1 p50 latency of the ORIGINAL and the COMPRESSED model on each target's
    runtime (onnxruntime, ai-edge-litert), both exported the same way (``_onnx_eval`` TorchScript /
    ``_tflite_eval`` litert-torch), so the difference is the passes' (e.g. channels removed), not the
    exporter's. Latency runs interleave the two in rounds (load on a shared CPU hits both alike).
    The build's own fp32 TFLite artifact is reused as "after": it comes from the same litert-torch
    call on the same model, and a conversion takes seconds.

    A target whose helper export fails (e.g. a model only the dynamo exporter handles) gets a row
    with ``error`` instead of figures: the build itself does not depend on them.

    Raises:
        ConversionError: a runtime refuses an artifact.
    """
    from edgepack import ConversionError

    from ._runners import open_session

    rows = []
    lat = rec.latency
    for target in rec.build.targets:
        try:
            before = _FP32_EXPORTS[target](_torch_module(run.source), x)
            built = [a.data for a in artifacts or [] if a.format == "tflite" == target and a.precision == "fp32"]
            after = built[0] if built else _FP32_EXPORTS[target](run.model.model, x)
        except ConversionError as e:
            # these figures are extra evidence; the build's artifacts came through its own exporter
            rows.append({"target": target, "error": e.one_line()})
            continue
        times: dict[str, list[float]] = {"before": [], "after": []}
        sessions = {"before": open_session(target, before, lat.threads), "after": open_session(target, after,
                                                                                                lat.threads)}
        for _ in range(3):
            for k, sess in sessions.items():
                times[k] += sess.time_one([x[:1]], max(1, lat.runs // 3), lat.warmup)
        p50 = {k: float(np.percentile(v, 50)) for k, v in times.items()}
        rows.append({"target": target, "bytes_before": len(before), "bytes_after": len(after),
                     "p50_ms_before": p50["before"], "p50_ms_after": p50["after"],
                     "speedup": p50["before"] / max(p50["after"], 1e-9), "threads": lat.threads})
    return rows


def search(run: CompressionRun, rec: Recipe, train: _data.Dataset, calib_x: np.ndarray | None, x_eval: np.ndarray,
           y_eval: np.ndarray | None) -> Recipe:
    """``[build] search``: measure the ``[search]`` candidates on the (compressed) model, switch ``run``
    to the pick and return the recipe narrowed to the pick's target, precision and quantization settings
    (``[search] targets`` defaults to the recipe's ``[build] targets``). A pick that misses the budget
    is still built (the best so far), with a warning naming the failed constraint.

    Raises:
        EvalDataRequiredError: no eval labels (every candidate is scored by accuracy).
        ConversionError: no candidate could be measured at all.
    """
    from edgepack import ConversionError

    from . import _search

    cfg = rec.search or _search.SearchConfig()
    with step("search"):
        best_model, res = _search.run(copy.deepcopy(run.model.model), cfg, eval_x=x_eval, eval_y=y_eval,
                                      calib_x=calib_x, train_x=train.x, train_y=train.y,
                                      default_targets=tuple(rec.build.targets))
    run.search = res
    if res.best is None or best_model is None:
        errors = "; ".join(f"{c.label}: {c.error}" for c in res.candidates if c.error) or res.status
        raise ConversionError(f"the search measured no usable candidate ({errors})", where="[search]",
                              hint="check the [search] precisions and ratios, or build without --search")
    best_model.eval()
    run.model = dataclasses.replace(run.model, model=best_model)
    return rec.with_overrides(**_pick_overrides(res.best))


def _pick_overrides(b: Any) -> dict[str, dict[str, Any]]:
    """The recipe changes that make the build ship exactly the measured pick: its target, its
    precision and that target's quantization settings."""
    out: dict[str, dict[str, Any]] = {"build": {"targets": (b.target,), "precisions": (b.precision,)}}
    if b.target == "onnx":
        out["onnx"] = {"calibration_method": b.calibration_method, "per_channel": b.per_channel}
    elif b.target == "tflite":
        out["tflite"] = {"calibration_method": b.calibration_method, "int8_io": b.int8_io}
    return out


def search_warning(run: CompressionRun) -> str | None:
    """Why the pick is not within budget (None when it is)."""
    res = run.search
    if res is None or res.met_budget:
        return None
    failed = "; ".join(res.best.failed) if res.best and res.best.failed else res.status
    return f"search {res.status}: no candidate met the budget; built the best so far ({res.best.label}), which " \
           f"fails {failed}"


def _artifact_accuracy(a: Artifact, x: np.ndarray, y: np.ndarray | None, refs: np.ndarray) -> tuple[float | None, float]:
    pred = run_batched(open_session(a.format, a.data), [x])[0].argmax(-1)
    acc = None if y is None else float((pred == np.asarray(y)).mean())
    return acc, float((pred == refs.argmax(-1)).mean())


def accuracy_failures(run: CompressionRun, rec: Recipe, artifacts: list[Artifact], rows: list[dict[str, Any]],
                      x: np.ndarray, y: np.ndarray | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each artifact's accuracy vs the ORIGINAL model, against ``[compress] max_accuracy_drop``.

    Returns (one figure row per artifact, parity-style failures for the artifacts over budget).
    """
    budget = rec.compress.max_accuracy_drop
    figures, failures = [], []
    for a, row in zip(artifacts, rows, strict=False):
        acc, agree = _artifact_accuracy(a, x, y, run.original_refs)
        # without labels, the original "scores" 1.0 against its own predictions and the artifact its agreement
        drop = (run.original_accuracy - acc) if acc is not None and run.original_accuracy is not None else 1.0 - agree
        ok = drop <= budget
        figures.append({"artifact": a.name, "accuracy": acc, "agreement_with_original": agree,
                        "accuracy_drop_vs_original": drop, "max_accuracy_drop": budget, "passed": ok,
                        "size": row["size"], "latency_ms_p50": (row.get("latency") or {}).get("p50_ms")})
        if not ok:
            fail = {"artifact": a.name, "output": "vs original", "metric": "accuracy_drop_vs_original",
                    "value": drop, "limit": budget}
            failures.append(fail)
            row["failures"] = [*row["failures"], fail]
    return figures, failures


def report_section(run: CompressionRun, figures: list[dict[str, Any]],
                   runtimes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``report.json["compression"]``: what each pass cost, each target runtime's fp32 size and latency
    before/after (``runtime_figures``), then each artifact vs the original."""
    out = {"passes": [r.to_dict() for r in run.reports], "attribution": attribution_table(run.reports),
            "original_accuracy": run.original_accuracy, **run.sizes, "artifacts": figures,
            "runtimes": runtimes or [],
            "parity_rule": "numeric parity of each artifact vs the COMPRESSED model; accuracy vs the ORIGINAL "
                           "model within [compress] max_accuracy_drop"}
    if run.search is not None:
        out["search"] = run.search.to_dict()
    return out
