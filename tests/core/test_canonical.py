"""Canonical JSON bytes are pinned, so signatures stay valid across runs,
Python versions and platforms."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgepack import ManifestParseError, canonical_bytes, loads_strict

DOC = {"version": 3, "name": "digits", "z": [1.5, 0.1, -2, True, None], "ü": "é", "a": {"b": 1e-7, "a": 10**20}}
PINNED = ('{"a":{"a":100000000000000000000,"b":1e-07},"name":"digits","version":3,'
          '"z":[1.5,0.1,-2,true,null],"ü":"é"}').encode()


def test_canonical_bytes_are_pinned() -> None:
    assert canonical_bytes(DOC) == PINNED


def test_canonical_bytes_are_the_same_in_a_fresh_interpreter_with_another_hash_seed() -> None:
    code = f"import sys; from edgepack import canonical_bytes; sys.stdout.buffer.write(canonical_bytes({DOC!r}))"
    for seed in ("1", "12345"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                             env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout
        assert out == PINNED


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_canonical_bytes_refuse_nan_and_infinity(bad: float) -> None:
    with pytest.raises(ValueError):
        canonical_bytes({"x": bad})


@pytest.mark.parametrize("text", ['{"a":1,"a":2}', '{"a":NaN}', '{"a":Infinity}', "{", b"\xff\xfe"])
def test_strict_loader_refuses_ambiguous_json(text) -> None:
    with pytest.raises(ManifestParseError):
        loads_strict(text)
