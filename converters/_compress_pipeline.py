"""Compose the compression passes in their fixed order, from recipe sections.

Order (issue #7): distill -> prune_structured -> prune -> finetune; the build
then quantizes, exports and checks parity against the ORIGINAL model. Each
pass runs only when its section is present (and, for a section with an
``enabled`` key, when it is true). ``[search]`` is separate (``_search.run``),
because it replaces the fixed passes with a measured choice among candidates.

``run_compression`` is what ``converters._pipeline`` calls before export; it
returns the compressed model and one ``PassReport`` per pass that ran.
"""

from __future__ import annotations

import copy
import difflib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepack import ConfigError

from . import _distill, _finetune, _prune, _prune_structured, _search
from ._passreport import PassReport

__all__ = ["ORDER", "SECTIONS", "CompressData", "attribution_table", "parse_sections", "run_compression"]

#: recipe section -> its frozen config dataclass
SECTIONS: dict[str, type] = {
    "distill": _distill.DistillConfig,
    "prune_structured": _prune_structured.StructuredPruneConfig,
    "prune": _prune.PruneConfig,
    "finetune": _finetune.FinetuneConfig,
    "search": _search.SearchConfig,
}
ORDER = ("distill", "prune_structured", "prune", "finetune")


@dataclass(frozen=True)
class CompressData:
    """Arrays the passes train and measure on (NCHW float32 for images; labels int)."""

    train_x: np.ndarray
    train_y: np.ndarray | None = None
    eval_x: np.ndarray | None = None
    eval_y: np.ndarray | None = None


def _coerce(value: Any, typ: Any, where: str) -> Any:
    if typing.get_origin(typ) is tuple or typ is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list", where=where)
        return tuple(value)
    base = [a for a in typing.get_args(typ) if a is not type(None)] or [typ]
    if float in base and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if value is None and type(None) in typing.get_args(typ):
        return None
    if not any(isinstance(b, type) and isinstance(value, b) and not (b is int and isinstance(value, bool))
               for b in base):
        raise ConfigError(f"{where} must be {' or '.join(getattr(b, '__name__', str(b)) for b in base)}, "
                          f"got {value!r}", where=where)
    return value


def parse_sections(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Recipe tables -> config objects, keyed by section; unknown keys name the closest valid one.

    Raises:
        ConfigError: an unknown section or key, a mistyped value, or a value out of range.
    """
    out = {}
    for name, values in sections.items():
        if name not in SECTIONS:
            close = difflib.get_close_matches(name, list(SECTIONS), n=1)
            raise ConfigError(f"unknown compression section [{name}]", where=f"[{name}]",
                              hint=f"did you mean [{close[0]}]?" if close else f"use one of {sorted(SECTIONS)}")
        cls = SECTIONS[name]
        hints = typing.get_type_hints(cls)
        vals = dict(values or {})
        enabled = vals.pop("enabled", True)
        for k in vals:
            if k not in hints:
                close = difflib.get_close_matches(k, list(hints), n=1)
                raise ConfigError(f"unknown key '{k}' in [{name}]", where=f"[{name}] {k}",
                                  hint=f"did you mean '{close[0]}'?" if close else f"valid: {sorted(hints)}")
        if enabled:
            out[name] = cls(**{k: _coerce(v, hints[k], f"[{name}] {k}") for k, v in vals.items()})
    return out


def _runners(data: CompressData, student: Any, original: Any) -> dict[str, Callable[[Any, Any], tuple[Any, PassReport]]]:
    kw: dict[str, Any] = {"train_x": data.train_x, "train_y": data.train_y, "eval_x": data.eval_x, "eval_y": data.eval_y}
    return {
        "distill": lambda m, c: _distill.run(m, c, student=student, **kw),
        "prune_structured": lambda m, c: _prune_structured.run(m, c, example=data.train_x, **kw),
        "prune": lambda m, c: _prune.run(m, c, **kw),
        "finetune": lambda m, c: _finetune.run(m, c, teacher=original, **kw),
    }


def run_compression(model: Any, sections: dict[str, Any], data: CompressData, *,
                    student: Any = None) -> tuple[Any, list[PassReport]]:
    """Run the configured passes in ``ORDER`` on a torch model.

    ``sections``: recipe tables (``{"prune": {"sparsity": 0.5}}``) or config objects.
    ``[search]`` is not run here (see ``_search.run``). The input model is not modified
    by distillation (a new student is trained); pruning passes modify their input.

    Raises:
        ConfigError (and its SparsityRangeError): bad sections.
        StudentMismatchError, StudentDerivationError, UnprunableLayerError: a pass cannot handle the model.
    """
    configs = {k: v for k, v in sections.items() if not isinstance(v, dict)}
    configs.update(parse_sections({k: v for k, v in sections.items() if isinstance(v, dict)}))
    # without labels, fine-tuning distils from the model as it came in (a frozen copy)
    original = copy.deepcopy(model) if "finetune" in configs and data.train_y is None else None
    runners = _runners(data, student, original)
    reports = []
    for name in ORDER:
        if name in configs:
            model, rep = runners[name](model, configs[name])
            reports.append(rep)
    return model, reports


def attribution_table(reports: list[PassReport]) -> list[dict[str, Any]]:
    """One row per pass: accuracy before/after, points lost, size and latency before/after."""
    rows = []
    for r in reports:
        c = r.cost()
        rows.append({"pass": r.name, "accuracy_before": r.before.accuracy, "accuracy_after": r.after.accuracy,
                     "accuracy_drop_points": c["accuracy_drop_points"], "size_before": r.before.size_bytes,
                     "size_after": r.after.size_bytes, "xz_before": r.before.compressed_bytes,
                     "xz_after": r.after.compressed_bytes, "latency_ms_before": r.before.latency_ms,
                     "latency_ms_after": r.after.latency_ms, "seconds": r.seconds})
    return rows

