"""``load`` and ``Model``: verify a bundle, pick an artifact and backend, predict.

Order matters (ARCHITECTURE: verification before execution): ``load`` verifies
the whole bundle first and hands the backend only the verified bytes kept in
memory, never a path, so nothing can be swapped between check and use.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgepack import Manifest, Trust, VerifiedBundle, verify_bundle

from ._backends import BACKENDS, BackendOptions, Session, get_backend, is_available
from ._errors import BackendUnavailableError, InputValidationError, OutOfRangeError
from ._iospec import IOSpec, gather_inputs, parse_io
from ._telemetry import Telemetry, TelemetryConfig

__all__ = ["LoadConfig", "Model", "load"]

OUT_OF_RANGE_POLICIES = ("count", "reject")


def _env_tuple(name: str) -> tuple[str, ...] | None:
    v = os.environ.get(name)
    return tuple(p.strip() for p in v.split(",") if p.strip()) if v else None


@dataclass(frozen=True)
class LoadConfig:
    """How to load a bundle. Defaults < ``EDGEPACK_*`` env (``from_env``) < explicit args.

    ``backends`` is the preference order over artifact formats; ``precisions``
    (if set) the preference order over artifact precisions within a format.
    """

    backends: tuple[str, ...] = ("onnx", "tflite")
    precisions: tuple[str, ...] | None = None
    artifact: str | None = None
    num_threads: int | None = None
    warmup_runs: int = 1
    on_out_of_range: str = "count"
    preserve_intermediates: bool = False
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)

    def __post_init__(self) -> None:
        if self.on_out_of_range not in OUT_OF_RANGE_POLICIES:
            raise InputValidationError(f"on_out_of_range must be one of {OUT_OF_RANGE_POLICIES}",
                                       where="LoadConfig.on_out_of_range")

    @classmethod
    def from_env(cls, **overrides: Any) -> LoadConfig:
        """Read ``EDGEPACK_BACKENDS`` (comma list), ``EDGEPACK_PRECISIONS`` and ``EDGEPACK_NUM_THREADS``."""
        env: dict[str, Any] = {}
        if (b := _env_tuple("EDGEPACK_BACKENDS")) is not None:
            env["backends"] = b
        if (p := _env_tuple("EDGEPACK_PRECISIONS")) is not None:
            env["precisions"] = p
        if (t := os.environ.get("EDGEPACK_NUM_THREADS")):
            env["num_threads"] = int(t)
        return cls(**{**env, **overrides})


def choose_artifact(manifest: Manifest, config: LoadConfig) -> tuple[str, str]:
    """Return (artifact path, format) by the config's preference order.

    Raises:
        BackendUnavailableError: if no artifact has an installed backend.
    """
    arts = manifest.artifacts
    if config.artifact is not None:
        arts = [a for a in arts if a.path in (config.artifact, f"artifacts/{config.artifact}")]
        if not arts:
            raise BackendUnavailableError(f"bundle has no artifact {config.artifact!r}",
                                          hint=f"choose one of {[a.path for a in manifest.artifacts]}")
    for fmt in config.backends:
        if not is_available(fmt):
            continue
        cands = [a for a in arts if a.format == fmt]
        if config.precisions is not None:
            rank = {p: i for i, p in enumerate(config.precisions)}
            cands = sorted((a for a in cands if a.precision in rank), key=lambda a: rank[a.precision])
        if cands:
            return cands[0].path, fmt
    have = sorted({a.format for a in arts})
    raise BackendUnavailableError(
        f"no installed backend among {list(config.backends)} can run this bundle's artifacts ({have})",
        hint=f"install a backend for one of {have}; registered: {sorted(BACKENDS)}")


class Model:
    """A verified, loaded artifact. Use ``runtime.load`` or ``InstallStore.load_active``."""

    def __init__(self, manifest: Manifest, artifact: str, fmt: str, data: bytes,
                 config: LoadConfig, *, version: int | None = None,
                 golden: bytes | None = None) -> None:
        self.manifest = manifest
        self.io: IOSpec = parse_io(manifest.io)
        self.artifact, self.format, self.config = artifact, fmt, config
        self.version = manifest.version if version is None else version
        self.artifact_bytes = data
        self.golden_bytes = golden
        entry = {**manifest.artifact(artifact).to_dict(),
                 "_n_inputs": len(self.io.inputs), "_n_outputs": len(self.io.outputs)}
        opts = BackendOptions(config.num_threads, config.preserve_intermediates)
        self.session: Session = get_backend(fmt).load(data, entry, opts)
        self.telemetry = Telemetry(self.io, name=manifest.name, version=self.version, artifact=artifact,
                                   backend=fmt, config=config.telemetry)
        self._telemetry_on = config.telemetry.enabled
        self._reject = config.on_out_of_range == "reject"
        self.last_out_of_range = 0   # values outside the training range in the last call (the "flag")
        self._warmup(config.warmup_runs)

    def _warmup(self, runs: int) -> None:
        if runs <= 0:
            return
        xs = [np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in s.shape], dtype=s.dtype)
              for s in self.io.inputs]
        for _ in range(runs):
            self.session.run(xs)

    @property
    def name(self) -> str:
        return self.manifest.name

    def _normalize(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for s, x in zip(self.io.inputs, xs, strict=True):
            if s.mean is not None:
                x = ((x - s.mean) * s.inv_std).astype(s.dtype, copy=False)
            out.append(x)
        return out

    def predict(self, inputs: np.ndarray | list[np.ndarray] | Mapping[str, np.ndarray], *,
                normalize: bool = False) -> np.ndarray | dict[str, np.ndarray]:
        """Run the model. One output: an array; several: a dict by output name.

        Inputs are checked against ``manifest.io`` without copying; with
        ``normalize=True`` the manifest's (x - mean) / std is applied first.
        ``last_out_of_range`` flags how many raw input values of this call were
        outside the training range (``out_of_range_mask`` says which samples).

        Raises:
            InputValidationError: wrong name, dtype, rank or dim (the message names the input).
            OutOfRangeError: values outside the training range, under ``on_out_of_range="reject"``.
            BackendError: the backend failed.
        """
        tel = self.telemetry
        try:
            xs = gather_inputs(self.io.inputs, inputs)
            if self._telemetry_on or self._reject:
                flagged = 0
                for k, x in enumerate(xs):
                    bad = tel.observe_input(k, x)
                    flagged += bad
                    if bad and self._reject:
                        s = self.io.inputs[k]
                        raise OutOfRangeError(
                            f"input {s.name!r} has values outside the training range "
                            f"[{s.range_min}, {s.range_max}]", where=s.name,
                            hint="check the sensor or preprocessing; or load with on_out_of_range='count'")
                self.last_out_of_range = flagged
            if normalize:
                xs = self._normalize(xs)
            t0 = time.perf_counter()
            outs = self.session.run(xs)
            dt_s = time.perf_counter() - t0
        except Exception as e:
            tel.record_error(e)
            raise
        if self._telemetry_on:
            tel.record(dt_s, outs[0])
        if len(outs) == 1:
            return outs[0]
        return {s.name: o for s, o in zip(self.io.outputs, outs, strict=True)}

    def out_of_range_mask(self, inputs: np.ndarray | list[np.ndarray] | Mapping[str, np.ndarray]) -> np.ndarray:
        """Flag samples: True where any input value of that sample is outside the training range."""
        xs = gather_inputs(self.io.inputs, inputs)
        flags = np.zeros(xs[0].shape[0], dtype=bool)
        for s, x in zip(self.io.inputs, xs, strict=True):
            lo = -np.inf if s.range_min is None else s.range_min
            hi = np.inf if s.range_max is None else s.range_max
            flags |= ((x < lo) | (x > hi)).reshape(x.shape[0], -1).any(axis=1)
        return flags

    def __repr__(self) -> str:
        return f"Model({self.name} v{self.version}, {self.artifact}, backend={self.format})"


def model_from_verified(vb: VerifiedBundle, config: LoadConfig | None = None, *,
                        artifacts: Mapping[str, bytes] | None = None, version: int | None = None) -> Model:
    """Build a ``Model`` from an already verified bundle (optionally with patched artifact bytes)."""
    config = config or LoadConfig()
    path, fmt = choose_artifact(vb.manifest, config)
    data = (artifacts or {}).get(path) or vb.member(path)
    golden = vb.members.get(vb.manifest.golden["path"]) if vb.manifest.golden else None
    return Model(vb.manifest, path, fmt, data, config, version=version, golden=golden)


def load(path: str | os.PathLike[str], trust: Trust, config: LoadConfig | None = None, *,
         now: dt.datetime | None = None) -> Model:
    """Verify the bundle at ``path`` against ``trust``, then load its best artifact.

    Raises:
        VerificationError: bad/missing signatures, hash or size mismatch, expiry (nothing is loaded).
        BundleError: the file is not a sound bundle.
        BackendUnavailableError: no installed backend can run its artifacts.
        BackendError: the backend refused the verified artifact.
    """
    vb = verify_bundle(path, trust, now=now, keep_members=True)
    return model_from_verified(vb, config)
