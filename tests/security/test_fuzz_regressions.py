"""Crashes the fuzzers found (issue 8 item 2), each pinned as a plain test: the input now ends
in the parser's own error instead of a TypeError/ValueError/KeyError deep inside it."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from support.fuzz import seeds

from edgepack import (
    ConfigError,
    ParamFormatError,
    apply_param_update,
    canonical_bytes,
    parse_param_update,
)
from edgepack._params import MAGIC
from edgepack._signing import sign_bytes
from edgepack._weights import read_weights


def _signed_epu(signed: dict, body: bytes) -> bytes:
    s = seeds()
    env = canonical_bytes({"signed": signed, "signatures": [sign_bytes(s.key, canonical_bytes(signed)).to_dict()]})
    return MAGIC + len(env).to_bytes(4, "big") + env + body


@pytest.mark.parametrize("field,value", [
    ("expires_at", None), ("expires_at", "tomorrow"), ("raw_size", "60"), ("body_size", -1), ("version", True),
    ("artifacts", {"m.onnx": {"format": "onnx"}}),
    ("artifacts", {"m.onnx": {"format": "onnx", "base_sha256": "0", "result_sha256": "0",
                              "tensors": [{"name": "W", "nbytes": "48"}]}}),
])
def test_a_validly_signed_but_mistyped_param_update_is_a_param_format_error(field, value):
    s = seeds()
    signed = {**s.epu_header, field: value}
    with pytest.raises(ParamFormatError):
        u, raw = parse_param_update(_signed_epu(signed, s.epu_body), s.trust,
                                    now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        apply_param_update(u, raw, {"m.onnx": s.onnx})


def test_the_unmodified_seed_update_still_applies():
    s = seeds()
    u, raw = parse_param_update(s.epu, s.trust, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    out = apply_param_update(u, raw, {"m.onnx": s.onnx})
    w = read_weights("onnx", out["m.onnx"])
    assert all(np.allclose(w[k], s.weights[k] + 0.5) for k in s.weights)


def test_an_onnx_tensor_whose_dims_do_not_fit_its_bytes_is_a_param_format_error():
    s = seeds()
    data = bytearray(s.onnx)
    # the bias initializer declares dims [3]; make it [2] (the varint after field 1 of the tensor "B")
    i = data.index(b"*\x15\x08\x03\x10\x01B\x01B")
    data[i + 3] = 2
    with pytest.raises(ParamFormatError, match="do not fit"):
        read_weights("onnx", bytes(data))


def test_asking_for_a_weight_the_model_does_not_have_is_a_param_format_error():
    with pytest.raises(ParamFormatError, match="no weight"):
        read_weights("onnx", seeds().onnx, ["W", "nope"])


def test_a_non_utf8_tensor_name_is_a_param_format_error():
    s = seeds()
    data = bytearray(s.onnx)
    i = data.index(b"B\x01W")
    data[i + 2] = 0xFF
    with pytest.raises(ParamFormatError):
        read_weights("onnx", bytes(data))


def test_a_recipe_list_of_lists_is_a_config_error():
    from converters._recipe import recipe_from_dict

    doc = {k: dict(v) for k, v in seeds().recipe.items()}
    doc["build"]["precisions"] = [[]]
    with pytest.raises(ConfigError, match=r"build.precisions\[0\]"):
        recipe_from_dict(doc)
