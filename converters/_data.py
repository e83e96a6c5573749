"""Calibration and eval data: ``.npy``, ``.npz`` (x and optional labels), a
directory of images with a preprocessing spec, or arrays passed to ``build()``.

Everything is checked before any model sees it: NaN/Inf, an empty set, and
(in ``check_against``) the shape and dtype the model expects.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepack import DataError

from ._errors import NonFiniteDataError
from ._spec import TensorSpec

__all__ = ["Dataset", "DataConfig", "run"]

_X_KEYS = ("x", "inputs", "input", "data", "images", "X")
_Y_KEYS = ("y", "labels", "label", "targets", "Y")
_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class DataConfig:
    max_samples: int | None = None
    image_size: tuple[int, ...] = ()
    image_mean: tuple[float, ...] = ()
    image_std: tuple[float, ...] = ()
    image_layout: str = "NCHW"


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray
    y: np.ndarray | None
    source: str
    fingerprint: str

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def check_against(self, spec: TensorSpec) -> Dataset:
        """The data cast to the input's dtype, after checking it fits.

        Raises:
            DataMismatchError: wrong per-sample shape or an int/float mix-up.
        """
        spec.check(self.x, self.source)
        return Dataset(self.x.astype(spec.dtype, copy=False), self.y, self.source, self.fingerprint)


def _fingerprint(x: np.ndarray, y: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in (x, y):
        if a is not None:
            a = np.ascontiguousarray(a)
            h.update(str((a.shape, a.dtype.str)).encode())
            h.update(a.tobytes())
    return h.hexdigest()


def _from_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as z:
        names = list(z.files)
        xk = next((k for k in _X_KEYS if k in names), None)
        if xk is None:
            if len(names) == 1:
                xk = names[0]
            else:
                raise DataError(f"{path.name} holds {names}; none is called one of {_X_KEYS}", where=str(path),
                                hint="save the inputs as 'x' (and labels as 'y'): np.savez(f, x=x, y=y)")
        yk = next((k for k in _Y_KEYS if k in names), None)
        return z[xk], (z[yk] if yk else None)


def _from_images(path: Path, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow ships with scikit-image/matplotlib
        raise DataError("reading an image directory needs Pillow", where=str(path), hint="pip install pillow") from e
    if len(cfg.image_size) != 2:
        raise DataError("an image directory needs a preprocessing spec", where=str(path),
                        hint="set [data] image_size = [H, W] (and image_mean/image_std) in the recipe")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in _IMAGE_EXT)
    if not files:
        raise DataError(f"no images ({', '.join(sorted(_IMAGE_EXT))}) under {path}", where=str(path))
    # Labels come from sub-directory names (ImageNet-folder style), if every image has one.
    classes = sorted({p.parent.name for p in files if p.parent != path})
    labelled = classes and all(p.parent != path for p in files)
    h, w = cfg.image_size
    xs, ys = [], []
    for f in files:
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
        except OSError as e:
            raise DataError(f"cannot read image {f.name}: {e}", where=str(f)) from e
        if cfg.image_mean and cfg.image_std:
            arr = (arr - np.asarray(cfg.image_mean, np.float32)) / np.asarray(cfg.image_std, np.float32)
        xs.append(arr.transpose(2, 0, 1) if cfg.image_layout.upper() == "NCHW" else arr)
        if labelled:
            ys.append(classes.index(f.parent.name))
    return np.stack(xs), (np.asarray(ys) if labelled else None)


def run(source: Any, config: DataConfig | None = None, *, what: str = "data") -> Dataset:
    """Load data from a path, an array, or an ``(x, y)`` pair.

    Raises:
        DataError: unreadable or empty data, or an unknown file type.
        NonFiniteDataError: NaN or Inf anywhere in the inputs.
    """
    cfg = config or DataConfig()
    y: np.ndarray | None = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        where = str(path)
        if not path.exists():
            raise DataError(f"{what} {path} does not exist", where=where)
        try:
            if path.is_dir():
                x, y = _from_images(path, cfg)
            elif path.suffix == ".npy":
                x = np.load(path, allow_pickle=False)
            elif path.suffix == ".npz":
                x, y = _from_npz(path)
            else:
                raise DataError(f"{what} must be .npy, .npz or a directory of images, not {path.suffix or path.name}",
                                where=where)
        except (ValueError, OSError) as e:
            raise DataError(f"cannot read {what} {path}: {e}", where=where) from e
    elif isinstance(source, tuple) and len(source) == 2:
        x, y = np.asarray(source[0]), (None if source[1] is None else np.asarray(source[1]))
        where = f"{what} (arrays)"
    else:
        x = np.asarray(source)
        where = f"{what} (array)"
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataError(f"{what} is empty", where=where)
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{what} has dtype {x.dtype}; expected numbers", where=where)
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))
        n = int((~np.isfinite(x)).sum())
        raise NonFiniteDataError(f"{what} holds {n} NaN/Inf value(s), first at index {tuple(int(i) for i in bad[0])}",
                                 where=where, hint="drop or impute those samples before building")
    if y is not None and len(y) != len(x):
        raise DataError(f"{what} has {len(x)} inputs but {len(y)} labels", where=where)
    if cfg.max_samples and len(x) > cfg.max_samples:
        x = x[: cfg.max_samples]
        y = None if y is None else y[: cfg.max_samples]
    return Dataset(x, y, where, _fingerprint(x, y))
