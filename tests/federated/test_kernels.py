"""The accumulation kernels: the C extension and the numpy fallback both agree with plain numpy."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

from edgepack.federated import _kernels
from edgepack.federated._kernels import CHUNK

SIZES = [0, 1, 7, CHUNK - 1, CHUNK + 3, 200_003]  # empty, tiny, around one fallback chunk, many chunks
DTYPES = [np.float32, np.float64, np.float16]  # float16 always takes the numpy path
NO_C = os.environ.get("EDGEPACK_NO_C_KERNEL") == "1"
W = 0.3  # not exactly representable, so every product rounds


@pytest.fixture(params=["c", "numpy"])
def kernel_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once through the C kernel and once through the numpy fallback."""
    if request.param == "c" and _kernels._c is None:
        pytest.skip("the C kernel is not loaded (test_c_kernel_is_built says why)")
    if request.param == "numpy":
        monkeypatch.setattr(_kernels, "_c", None)
    return str(request.param)


def _data(n: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    return rng.normal(size=n) * 10, rng.normal(size=n).astype(dtype)


@pytest.mark.skipif(NO_C, reason="EDGEPACK_NO_C_KERNEL=1 switches the C kernel off")
def test_c_kernel_is_built() -> None:
    # pyproject.toml builds it with optional = true, so a failed compile only warns; this makes it fail CI.
    assert _kernels.HAVE_C, "edgepack.federated._fastsum did not build: see the pip install log"


def test_no_c_kernel_env_var_selects_numpy() -> None:
    code = "from edgepack.federated import _kernels as k; print(k.HAVE_C, k._c)"
    env = {**os.environ, "EDGEPACK_NO_C_KERNEL": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "None"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_axpy_equals_float64_numpy_bit_for_bit(kernel_path: str, n: int, dtype: type) -> None:
    acc, x = _data(n, dtype)
    want = acc + W * x.astype(np.float64)
    _kernels.axpy(acc, x, W)
    np.testing.assert_array_equal(acc, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_dist2_matches_numpy(kernel_path: str, n: int, dtype: type) -> None:
    acc, x = _data(n, dtype)
    inv = 1 / 3.7
    want = float(np.sum((x.astype(np.float64) - acc * inv) ** 2))
    assert _kernels.dist2(acc, x, inv) == pytest.approx(want, rel=1e-12, abs=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_sumsq_matches_numpy(kernel_path: str, n: int, dtype: type) -> None:
    _, x = _data(n, dtype)
    want = float(np.sum(x.astype(np.float64) ** 2))
    assert _kernels.sumsq(x) == pytest.approx(want, rel=1e-12, abs=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_all_finite_is_true_for_finite_data(kernel_path: str, n: int, dtype: type) -> None:
    _, x = _data(n, dtype)
    assert _kernels.all_finite(x) is True


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, CHUNK + 1, CHUNK + 2])  # first, in the second fallback chunk, last
@pytest.mark.parametrize("dtype", DTYPES)
def test_all_finite_finds_one_nan_or_inf(kernel_path: str, dtype: type, where: int, value: float) -> None:
    _, x = _data(CHUNK + 3, dtype)
    x[where] = value
    assert _kernels.all_finite(x) is False


# (dtype, size) of two tensors laid out one after the other, as RoundAccumulator.finalize narrows them.
LAYOUTS = [
    ((np.float32, 7), (np.float32, 1)),
    ((np.float16, CHUNK + 3), (np.float32, CHUNK - 1)),  # the float32 output needs realigning
    ((np.float64, 1), (np.float16, 200_003)),  # float64 in place, then the narrowest
    ((np.float32, 0), (np.float64, 200_003)),
    ((np.float16, 7), (np.float64, 0)),
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_divide_narrow_in_place_matches_numpy(kernel_path: str, layout: list[tuple[type, int]]) -> None:
    buf = np.random.default_rng(5).normal(size=sum(n for _, n in layout)) * 100
    orig = buf.copy()
    wsum = 7.3
    placed = []
    src = dst = 0
    for dtype, n in layout:
        dt = np.dtype(dtype)
        dst += -dst % dt.itemsize  # finalize's rule: align the next output to its itemsize
        assert dst <= 8 * src
        _kernels.divide_narrow(buf, src, n, dst, dt, wsum)
        placed.append((dt, src, n, dst))
        src, dst = src + n, dst + n * dt.itemsize
    # Checked only after both narrowed: the second must not have clobbered the first.
    for dt, src, n, dst in placed:
        got = np.frombuffer(buf.view(np.uint8), dt, count=n, offset=dst) if n else np.empty(0, dt)
        np.testing.assert_array_equal(got, (orig[src: src + n] / wsum).astype(dt))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("src", "dst_byte"), [(1, 3), (5, 40), (5, 0)])  # unaligned, in place, far back
def test_divide_narrow_at_any_byte_offset(kernel_path: str, dtype: type, src: int, dst_byte: int) -> None:
    buf = np.random.default_rng(9).normal(size=CHUNK + 20)
    n = buf.size - src
    want = (buf[src:] / 3.0).astype(dtype)
    _kernels.divide_narrow(buf, src, n, dst_byte, np.dtype(dtype), 3.0)
    np.testing.assert_array_equal(np.frombuffer(buf.view(np.uint8), dtype, count=n, offset=dst_byte), want)


def _read_only(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


K = _kernels
# Each takes (acc, x): a 64-element float64 accumulator and float32 update, and misuses one argument.
BAD_CALLS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], object], type[Exception], str]] = {
    "axpy x int32": (lambda acc, x: K.axpy(acc, x.astype(np.int32), W), TypeError, "floats"),
    "axpy acc float32": (lambda acc, x: K.axpy(acc.astype(np.float32), x, W), TypeError, "float64"),
    "axpy acc big-endian": (lambda acc, x: K.axpy(acc.astype(">f8"), x, W), TypeError, "byte order"),
    "axpy acc list": (lambda acc, x: K.axpy(list(acc), x, W), TypeError, "numpy array"),
    "axpy x shorter": (lambda acc, x: K.axpy(acc, x[:-1], W), ValueError, "64 elements but x has 63"),
    "axpy x strided": (lambda acc, x: K.axpy(acc, np.repeat(x, 2)[::2], W), ValueError, "C-contiguous"),
    "axpy x 2-D": (lambda acc, x: K.axpy(acc, x.reshape(8, 8), W), ValueError, "1-D"),
    "axpy acc read-only": (lambda acc, x: K.axpy(_read_only(acc), x, W), ValueError, "read-only"),
    "dist2 x shorter": (lambda acc, x: K.dist2(acc, x[1:], 0.5), ValueError, "elements"),
    "sumsq x strided": (lambda acc, x: K.sumsq(x[::2]), ValueError, "C-contiguous"),
    "all_finite x int": (lambda acc, x: K.all_finite(np.arange(4)), TypeError, "floats"),
    "narrow dst_byte > 8*src": (lambda acc, x: K.divide_narrow(acc, 2, 3, 17, np.dtype(np.float32), 1.0),
                                ValueError, "8\\*src"),
    "narrow past the end": (lambda acc, x: K.divide_narrow(acc, 60, 5, 0, np.dtype(np.float32), 1.0),
                            ValueError, "outside"),
    "narrow negative n": (lambda acc, x: K.divide_narrow(acc, 1, -1, 0, np.dtype(np.float32), 1.0),
                          ValueError, "outside"),
    "narrow negative dst": (lambda acc, x: K.divide_narrow(acc, 1, 1, -4, np.dtype(np.float32), 1.0),
                            ValueError, "dst_byte"),
    "narrow longdouble": (lambda acc, x: K.divide_narrow(acc, 4, 4, 0, np.dtype(np.longdouble), 1.0),
                          TypeError, "at most 8 bytes"),
    "narrow int": (lambda acc, x: K.divide_narrow(acc, 4, 4, 0, np.dtype(np.int32), 1.0), TypeError, "float"),
    "narrow read-only": (lambda acc, x: K.divide_narrow(_read_only(acc), 0, 4, 0, np.dtype(np.float32), 1.0),
                         ValueError, "read-only"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_arguments_raise_and_change_nothing(kernel_path: str, case: str) -> None:
    call, exc, match = BAD_CALLS[case]
    acc = np.linspace(1, 2, 64)
    x = np.arange(64, dtype=np.float32)
    before = acc.copy()
    with pytest.raises(exc, match=match):
        call(acc, x)
    np.testing.assert_array_equal(acc, before)


def _ro64() -> np.ndarray:
    return _read_only(np.ones(64))


# The extension checks its own arguments too (a bad length there would corrupt memory).
RAW_BAD_CALLS: dict[str, tuple[Callable[[], object], type[Exception], str]] = {
    "acc float32": (lambda: K._c.axpy(np.ones(64, np.float32), np.ones(64, np.float32), W), TypeError, "float64"),
    "x float16": (lambda: K._c.axpy(np.ones(64), np.ones(64, np.float16), W), TypeError, "float32 or float64"),
    "x int32": (lambda: K._c.sumsq(np.ones(64, np.int32)), TypeError, "float32 or float64"),
    "x big-endian": (lambda: K._c.all_finite(np.ones(64, ">f4")), TypeError, "'>f'"),
    "not a buffer": (lambda: K._c.sumsq([1.0, 2.0]), TypeError, "buffer"),
    "length": (lambda: K._c.axpy(np.ones(64), np.ones(63, np.float32), W), ValueError, "64 elements but x has 63"),
    "dist2 length": (lambda: K._c.dist2(np.ones(64), np.ones(65), 1.0), ValueError, "has 65"),
    "strided": (lambda: K._c.axpy(np.ones(64), np.ones(128, np.float32)[::2], W), ValueError, "C-contiguous"),
    "read-only": (lambda: K._c.axpy(_ro64(), np.ones(64, np.float32), W), ValueError, "read-only"),
    "narrow dst_byte > 8*src": (lambda: K._c.divide_narrow(np.ones(64), 2, 3, 17, "f", 1.0), ValueError, "8\\*src"),
    "narrow past the end": (lambda: K._c.divide_narrow(np.ones(64), 60, 5, 0, "f", 1.0), ValueError, "outside"),
    "narrow src < 0": (lambda: K._c.divide_narrow(np.ones(64), -1, 1, 0, "f", 1.0), ValueError, "outside"),
    "narrow code": (lambda: K._c.divide_narrow(np.ones(64), 1, 1, 0, "e", 1.0), TypeError, "'f' or 'd'"),
}


@pytest.mark.skipif(_kernels._c is None, reason="the C kernel is not loaded")
@pytest.mark.parametrize("case", list(RAW_BAD_CALLS))
def test_c_kernel_refuses_bad_buffers(case: str) -> None:
    call, exc, match = RAW_BAD_CALLS[case]
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.skipif(_kernels._c is None or sys.byteorder != "little", reason="needs the C kernel on little-endian")
def test_c_kernel_takes_explicit_little_endian_formats() -> None:
    acc = (ctypes.c_double * 4)(1, 1, 1, 1)
    x = (ctypes.c_float * 4)(1, 2, 3, 4)
    assert (memoryview(acc).format, memoryview(x).format) == ("<d", "<f")  # as ctypes exports them
    _kernels._c.axpy(acc, x, 2.0)
    assert list(acc) == [3.0, 5.0, 7.0, 9.0]
