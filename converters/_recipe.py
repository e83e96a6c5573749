"""The build recipe: ``edgepack.toml`` parsed into frozen dataclasses.

Config flows one way (STYLE rule 10): dataclass defaults -> the TOML file ->
explicit overrides (CLI flags or ``build()`` keyword arguments). A key the
recipe does not know is an error naming the closest valid key, because a
misspelled ``min_cosine`` that is silently ignored would loosen a guarantee.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack import ConfigError

from ._distill import DistillConfig
from ._errors import UnknownKeyError
from ._finetune import FinetuneConfig
from ._prune import PruneConfig
from ._prune_structured import StructuredPruneConfig
from ._search import SearchConfig

__all__ = [
    "PRECISIONS",
    "TARGETS",
    "COMPRESSION_SECTIONS",
    "BuildSection",
    "CompressSection",
    "DataSection",
    "InputSection",
    "LatencySection",
    "LocalizeSection",
    "ModelSection",
    "OnnxSection",
    "OutputSection",
    "Recipe",
    "TfliteSection",
    "Tolerance",
    "load_recipe",
    "recipe_from_dict",
    "write_init",
]

TARGETS = ("onnx", "tflite")
PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static")
#: "int8" on the command line means the full-integer static kind (the one that is fast on CPUs)
PRECISION_ALIASES = {"int8": "int8-static", "dynamic": "int8-dynamic", "float16": "fp16", "float32": "fp32"}


@dataclass(frozen=True)
class ModelSection:
    name: str = "model"
    version: int = 1
    #: a Python reference ``pkg.mod:factory`` or a path; the CLI argument wins
    source: str | None = None


@dataclass(frozen=True)
class InputSection:
    name: str = "input"
    #: full shape with a symbolic batch first, e.g. ["batch", 1, 8, 8]; inferred when empty
    shape: tuple[Any, ...] = ()
    dtype: str = "float32"
    layout: str | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


@dataclass(frozen=True)
class OutputSection:
    names: tuple[str, ...] = ()
    task: str = "classification"
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildSection:
    targets: tuple[str, ...] = ("onnx", "tflite")
    precisions: tuple[str, ...] = ("fp32", "int8-static")
    seed: int = 0
    out: str = "dist"
    key: str | None = None
    strict: bool = False
    auto_fix: bool = False
    #: run the [search] section (defaults when absent) and build its pick (``edgepack build --search``)
    search: bool = False


@dataclass(frozen=True)
class DataSection:
    calibration: str | None = None
    eval: str | None = None
    calibration_samples: int = 128
    eval_samples: int = 512
    #: for image directories: resize to this (height, width), scale to [0, 1] then normalise
    image_size: tuple[int, ...] = ()
    image_mean: tuple[float, ...] = ()
    image_std: tuple[float, ...] = ()
    image_layout: str = "NCHW"
    #: random eval inputs when no eval data is given (weak evidence: warned about)
    random_samples: int = 64
    #: training data for the compression passes ([distill], [prune]...); the calibration data when unset
    train: str | None = None
    train_samples: int = 2048


@dataclass(frozen=True)
class OnnxSection:
    opset: int = 18
    calibration_method: str = "minmax"  # minmax | entropy | percentile
    per_channel: bool = True
    pre_process: bool = True
    #: "auto" asks converters._cpu for what is fast on this CPU
    activation_type: str = "auto"  # auto | uint8 | int8
    quant_format: str = "auto"  # auto | qdq | qoperator
    reduce_range: str = "auto"  # auto | true | false
    #: exact size savings (converters._onnx_compact): no exporter debug metadata, no all-zero
    #: weight/bias zero points, bias scales as Mul of their factors; outputs bit-identical
    compact: bool = True
    #: int8-static: node names always kept in float (e.g. the ``nodes_kept_in_float`` a previous
    #: ``--auto-fix`` build reported, pinned for a reproducible build that skips the search)
    nodes_to_exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class TfliteSection:
    #: int8-static: integer input/output tensors. Unset: Keras sources keep float I/O, torch sources
    #: (ai-edge-quantizer) get int8 I/O, recorded in the artifact's io_quant
    int8_io: bool | None = None
    #: int8-static from a torch source: "minmax" (true range over the calibration set) | "moving_average"
    #: (ai-edge-quantizer's own average of per-sample ranges, which clips outliers; see _quantize_tflite)
    calibration_method: str = "minmax"


@dataclass(frozen=True)
class Tolerance:
    """A parity budget for one precision. ``None`` means "not checked"."""

    max_abs: float | None = None
    max_rel: float | None = None
    min_cosine: float | None = None
    min_sqnr_db: float | None = None
    min_top1_agreement: float | None = None
    max_accuracy_drop: float | None = None


#: documented defaults (docs/build.md, "Tolerances"); the recipe's [parity.<precision>] overrides per field
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=1e-4, min_cosine=0.99999, min_top1_agreement=0.99),
    "fp16": Tolerance(max_rel=1e-2, min_cosine=0.9999, min_top1_agreement=0.98),
    "int8-dynamic": Tolerance(min_cosine=0.99, min_top1_agreement=0.95, max_accuracy_drop=0.02),
    "int8-static": Tolerance(min_cosine=0.98, min_top1_agreement=0.95, max_accuracy_drop=0.02),
}


@dataclass(frozen=True)
class LocalizeSection:
    #: a tensor whose SQNR vs the float model falls under this is "diverged"
    diverge_sqnr_db: float = 20.0
    worst_nodes: int = 5
    #: --auto-fix keeps at most this many nodes in float
    max_excluded: int = 5
    #: --auto-fix re-quantizes at most this many times (each try: quantize + parity on the eval data)
    max_tries: int = 8
    #: nodes whose measured output-SQNR gain in float is below this (dB) are not tried
    min_gain_db: float = 0.25
    #: eval samples for localization and the per-node sensitivity measurement
    samples: int = 8
    #: at most this many quantized nodes get their sensitivity measured (one ORT session each)
    max_candidates: int = 16


@dataclass(frozen=True)
class LatencySection:
    runs: int = 30
    warmup: int = 5
    threads: int = 1
    #: a quantized artifact is "slower" when its p50 exceeds fp32's by more than this fraction
    slower_margin: float = 0.10
    #: ...and by more than this many ms (below it, per-call overhead decides, not the int8 kernels)
    min_slower_ms: float = 0.05


@dataclass(frozen=True)
class CompressSection:
    """``[compress]``: the budget a compressed model (any pass section present) is held to."""

    #: fraction (0.01 = one point): each artifact's eval accuracy may fall at most this far below the
    #: ORIGINAL model's; without eval labels, 1 - top-1 agreement with the original is used instead
    max_accuracy_drop: float = 0.02


#: optional pass sections, in the order they run (converters._compress_pipeline.ORDER); None = not run
COMPRESSION_SECTIONS: dict[str, type] = {
    "distill": DistillConfig,
    "prune_structured": StructuredPruneConfig,
    "prune": PruneConfig,
    "finetune": FinetuneConfig,
    "search": SearchConfig,
}


@dataclass(frozen=True)
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    input: InputSection = field(default_factory=InputSection)
    output: OutputSection = field(default_factory=OutputSection)
    build: BuildSection = field(default_factory=BuildSection)
    data: DataSection = field(default_factory=DataSection)
    onnx: OnnxSection = field(default_factory=OnnxSection)
    tflite: TfliteSection = field(default_factory=TfliteSection)
    parity: dict[str, Tolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    localize: LocalizeSection = field(default_factory=LocalizeSection)
    latency: LatencySection = field(default_factory=LatencySection)
    compress: CompressSection = field(default_factory=CompressSection)
    distill: DistillConfig | None = None
    prune_structured: StructuredPruneConfig | None = None
    prune: PruneConfig | None = None
    finetune: FinetuneConfig | None = None
    search: SearchConfig | None = None

    def compression(self) -> dict[str, Any]:
        """The pass sections that are set, as ``{section: config}``."""
        return {k: getattr(self, k) for k in COMPRESSION_SECTIONS if getattr(self, k) is not None}

    def tolerance(self, precision: str) -> Tolerance:
        return self.parity.get(precision, DEFAULT_TOLERANCES[precision])

    def with_overrides(self, **sections: dict[str, Any]) -> Recipe:
        """A copy with some fields replaced, e.g. ``with_overrides(build={"targets": ("onnx",)})``.
        ``None`` values are skipped so unset CLI flags do not clobber the recipe.

        Raises:
            UnknownKeyError: for a section or field that does not exist.
        """
        changes: dict[str, Any] = {}
        for sec_name, values in sections.items():
            sec = _section(self, sec_name)
            vals = {k: v for k, v in values.items() if v is not None}
            cls = COMPRESSION_SECTIONS.get(sec_name, type(sec))
            changes[sec_name] = _build_section(cls, vals, sec_name, base=sec)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _section(recipe: Recipe, name: str) -> Any:
    valid = [f.name for f in dataclasses.fields(Recipe)]
    if name not in valid:
        _unknown(name, valid, "recipe")
    return getattr(recipe, name)


def _unknown(key: str, valid: list[str], where: str) -> typing.NoReturn:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(sorted(valid))}"
    raise UnknownKeyError(f"unknown recipe key '{key}'", where=where, hint=hint)


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check a TOML value against a field's type; lists become tuples (frozen)."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        typ = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list", where=where)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[T, ...]: check every item (fuzzing found [[]])
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(value)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is Any or (isinstance(typ, type) and isinstance(value, typ) and not (typ is int and isinstance(value, bool))):
        return value
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"{where} must be {name}, got {type(value).__name__} {value!r}", where=where)


def _build_section(cls: type, values: dict[str, Any], where: str, base: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for k, v in values.items():
        if k not in names:
            _unknown(k, names, f"[{where}]")
        out[k] = _coerce(v, hints[k], f"{where}.{k}")
    obj = dataclasses.replace(base, **out) if base is not None else cls(**out)
    _validate(obj, where)
    return obj


def _validate(sec: Any, where: str) -> None:
    if isinstance(sec, BuildSection):
        for t in sec.targets:
            if t not in TARGETS:
                raise ConfigError(f"unknown target {t!r}", where=f"{where}.targets", hint=f"use {TARGETS}")
        bad = [p for p in sec.precisions if PRECISION_ALIASES.get(p, p) not in PRECISIONS]
        if bad:
            raise ConfigError(f"unknown precision {bad[0]!r}", where=f"{where}.precisions",
                              hint=f"use {PRECISIONS} (or 'int8' for int8-static)")
    if isinstance(sec, TfliteSection) and sec.calibration_method not in ("minmax", "moving_average"):
        raise ConfigError(f"{where}.calibration_method must be one of ('minmax', 'moving_average')",
                          where=f"{where}.calibration_method")
    if isinstance(sec, OnnxSection):
        for k, ok in (("calibration_method", ("minmax", "entropy", "percentile")),
                      ("activation_type", ("auto", "uint8", "int8")),
                      ("quant_format", ("auto", "qdq", "qoperator")), ("reduce_range", ("auto", "true", "false"))):
            if str(getattr(sec, k)).lower() not in ok:
                raise ConfigError(f"{where}.{k} must be one of {ok}", where=f"{where}.{k}")


def normalize_precisions(precisions: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Map aliases ('int8' -> 'int8-static') and drop duplicates, keeping order."""
    out: list[str] = []
    for p in precisions:
        p = PRECISION_ALIASES.get(p.strip(), p.strip())
        if p not in PRECISIONS:
            raise ConfigError(f"unknown precision {p!r}", where="--precision", hint=f"use {PRECISIONS} or int8")
        if p not in out:
            out.append(p)
    return tuple(out)


def recipe_from_dict(doc: dict[str, Any], where: str = "recipe") -> Recipe:
    """Build a Recipe from a parsed TOML document.

    Raises:
        UnknownKeyError: a key (section or field) the recipe does not have.
        ConfigError: a value of the wrong type or outside its choices.
    """
    sections: dict[str, Any] = {}
    valid = [f.name for f in dataclasses.fields(Recipe)]
    for name, values in doc.items():
        if name not in valid:
            _unknown(name, valid, where)
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table", where=f"{where}:[{name}]")
        if name in COMPRESSION_SECTIONS:
            vals = dict(values)
            # `enabled = false` keeps a section in the file without running it
            if not _coerce(vals.pop("enabled", True), bool, f"{name}.enabled"):
                continue
            sections[name] = _build_section(COMPRESSION_SECTIONS[name], vals, name)
        elif name == "parity":
            tol = dict(DEFAULT_TOLERANCES)
            for prec, vals in values.items():
                prec = PRECISION_ALIASES.get(prec, prec)
                if prec not in PRECISIONS:
                    _unknown(prec, list(PRECISIONS), f"{where}:[parity]")
                if not isinstance(vals, dict):
                    raise ConfigError(f"[parity.{prec}] must be a table", where=f"{where}:[parity.{prec}]")
                tol[prec] = _build_section(Tolerance, vals, f"parity.{prec}", base=DEFAULT_TOLERANCES[prec])
            sections[name] = tol
        else:
            cls = typing.get_type_hints(Recipe)[name]
            sections[name] = _build_section(cls, values, name)
    return Recipe(**sections)


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read ``edgepack.toml``.

    Raises:
        ConfigError: the file is missing or is not valid TOML.
        UnknownKeyError: a misspelled key (names the closest valid one).
    """
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"recipe {p} does not exist", where=str(p), hint="run 'edgepack init' to write one") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read recipe {p}: {e}", where=str(p)) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"recipe {p} is not valid TOML: {e}", where=str(p)) from e
    return recipe_from_dict(doc, where=str(p))


INIT_TEMPLATE = Path(__file__).with_name("edgepack.toml")


def write_init(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write the commented starter recipe (``edgepack init``).

    Raises:
        ConfigError: the file exists and ``overwrite`` is false.
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise ConfigError(f"{p} already exists", where=str(p), hint="pass --force to overwrite it")
    text = INIT_TEMPLATE.read_text(encoding="utf-8")
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
    return p
