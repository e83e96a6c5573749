"""Fuzz targets for every parser that takes outside input (issue 8 item 2), shared by the
bounded in-suite runs (tests/security/test_fuzz_*.py) and the long run (benchmarks/fuzz_long.py).

Each target is a hypothesis strategy plus a ``run(input)`` that feeds one input to the real
parser. A target may end only in its parser's documented way: an ``EdgepackError`` (or, for
``validate_update``, a ``Rejection`` returned as data). Anything else escaping is a crash.

Inputs are structure-aware: random JSON, valid documents with one field replaced by random
JSON, and byte mutations of valid files; for the two signed formats, also headers that are
*validly signed* but malformed, since a compromised device or signer is in the threat model.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from edgepack import (
    BundleBuilder,
    EdgepackError,
    Manifest,
    Trust,
    apply_param_update,
    canonical_bytes,
    encode_param_update,
    generate_key,
    loads_strict,
    parse_param_update,
)
from edgepack._weights import locate_weights, read_weights

__all__ = ["FUZZ_PROFILE", "TARGETS", "Target", "json_values", "mutate"]

#: profiles: "fuzz-ci" bounds each in-suite target to a few seconds; "fuzz-long" is for benchmarks/fuzz_long.py
settings.register_profile("fuzz-ci", max_examples=150, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                 HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("fuzz-long", settings.get_profile("fuzz-ci"), max_examples=2000)
FUZZ_PROFILE = "fuzz-ci"

_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=40) | st.sampled_from(["", "..", "../x", "/etc/passwd", "a" * 300, "\x00", "onnx",
                                                      "tflite", "fp32", "int8", "none", "topk", "zlib", "lzma"]))
json_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=12), c,
                                                                                         max_size=6), max_leaves=25)


@st.composite
def mutate(draw: Any, data: bytes) -> bytes:
    """Byte flips, a truncation or an insertion of ``data`` (never ``data`` itself)."""
    buf = bytearray(data)
    kind = draw(st.sampled_from(["flip", "cut", "insert", "splice"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] ^= draw(st.integers(1, 255))
    elif kind == "cut":
        buf = buf[: draw(st.integers(0, len(buf) - 1))]
    elif kind == "insert":
        i = draw(st.integers(0, len(buf)))
        buf[i:i] = draw(st.binary(min_size=1, max_size=64))
    else:
        i, j = sorted(draw(st.lists(st.integers(0, len(buf)), min_size=2, max_size=2)))
        buf[i:j] = draw(st.binary(max_size=32))
    out = bytes(buf)
    return out if out != data else out + b"\x00"


@st.composite
def replace_field(draw: Any, doc: Any) -> Any:
    """``doc`` with one value somewhere inside it replaced by random JSON (or a key removed)."""
    doc = copy.deepcopy(doc)
    node, path = doc, []
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append((node, key))
        node = node[key]
    if not path:
        return draw(json_values)
    parent, key = path[-1]
    if isinstance(parent, dict) and draw(st.integers(0, 4)) == 0:
        del parent[key]
    else:
        parent[key] = draw(json_values)
    return doc


@dataclass(frozen=True)
class Target:
    """One parser: ``strategy`` draws an input, ``run`` feeds it to the parser."""

    name: str
    strategy: st.SearchStrategy[Any]
    run: Callable[[Any], object]
    #: exception types that are a documented refusal (anything else is a crash)
    allowed: tuple[type[BaseException], ...] = (EdgepackError,)


def _expect(fn: Callable[[], object], allowed: tuple[type[BaseException], ...]) -> object:
    try:
        return fn()
    except allowed as e:
        assert str(e), "an error with no message"
        return e


# ---- seeds: small valid documents the mutations start from ----------------------------------------------------

class _Seeds:
    def __init__(self) -> None:
        from support.models import TINY_IO, tiny_onnx_model

        self.key = generate_key()
        self.trust = Trust.of([self.key.public])
        self.onnx = tiny_onnx_model()
        b = BundleBuilder("fuzz", 1, io=TINY_IO)
        b.add_artifact("m.onnx", self.onnx, format="onnx", precision="fp32")
        with tempfile.TemporaryDirectory() as d:
            from edgepack import open_bundle

            path = b.write(Path(d) / "fuzz-1.edgepack", [self.key])
            self.manifest = open_bundle(path).manifest.to_dict()
        w = read_weights("onnx", self.onnx)
        self.weights = w
        new = {k: (v + np.float32(0.5)).astype(v.dtype) for k, v in w.items()}
        self.epu, _ = encode_param_update(model="fuzz", version=2, base_version=1,
                                          base_artifacts={"m.onnx": ("onnx", self.onnx)},
                                          new_weights={"m.onnx": new}, keys=[self.key])
        self.epu_header = self._epu_header()
        self.trust_doc = json.loads(canonical_bytes(self.trust.to_dict()))
        recipe = Path(__file__).resolve().parents[2] / "converters" / "edgepack.toml"
        self.recipe = tomllib.loads(recipe.read_text())
        self._device()

    def _epu_header(self) -> dict[str, Any]:
        from edgepack._params import MAGIC

        n = int.from_bytes(self.epu[len(MAGIC):len(MAGIC) + 4], "big")
        env = json.loads(self.epu[len(MAGIC) + 4:len(MAGIC) + 4 + n])
        self.epu_body = self.epu[len(MAGIC) + 4 + n:]
        return env["signed"]

    def _device(self) -> None:
        from edgepack.federated import ParamSpec, RoundContext
        from edgepack.federated._update import encode_plain

        self.dev_key = generate_key()
        params = {k: np.zeros_like(v) for k, v in self.weights.items()}
        self.spec = ParamSpec.from_params(params)
        self.ctx = RoundContext("r-fuzz", 1, self.spec, ("none", "int8", "topk"))
        rng = np.random.default_rng(0)
        self.delta = {k: rng.normal(0, 0.01, v.shape).astype(v.dtype) for k, v in params.items()}
        self.device_blob = encode_plain(self.dev_key, self.delta, round_id="r-fuzz", base_version=1,
                                        device_id="d-fuzz", num_samples=10)


_SEEDS: _Seeds | None = None


def seeds() -> _Seeds:
    global _SEEDS
    if _SEEDS is None:
        _SEEDS = _Seeds()
    return _SEEDS


# ---- the targets ------------------------------------------------------------------------------------------------

def _manifest_inputs() -> st.SearchStrategy[Any]:
    m = seeds().manifest
    raw = canonical_bytes(m)
    return st.one_of(json_values, replace_field(m), mutate(raw))


def _run_manifest(doc: Any) -> object:
    def go() -> object:
        d = loads_strict(doc, what="manifest") if isinstance(doc, bytes) else doc
        man = Manifest.from_dict(d)
        again = Manifest.from_dict(json.loads(canonical_bytes(man.to_dict())))  # fields survive a round trip
        assert again.to_dict() == man.to_dict()
        man.members()
        return man
    return _expect(go, (EdgepackError,))


#: what a TOML document can hold (no null); recipe_from_dict only ever sees tomllib's output
_toml_scalars = (st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
                 | st.text(max_size=40) | st.sampled_from(["fp32", "int8", "int8-static", "fp16", "onnx", "tflite",
                                                           "", "../x"]))
toml_values = st.recursive(_toml_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c,
                                                                                             max_size=5), max_leaves=20)


@st.composite
def _recipe_doc(draw: Any) -> dict[str, Any]:
    doc = copy.deepcopy(seeds().recipe)
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(doc)) | st.text(max_size=8))
        table = doc.setdefault(section, {})
        if isinstance(table, dict) and draw(st.booleans()):
            keys = sorted(table) or ["x"]
            table[draw(st.sampled_from(keys) | st.text(max_size=8))] = draw(toml_values)
        else:
            doc[section] = draw(toml_values)
    return doc


def _recipe_inputs() -> st.SearchStrategy[Any]:
    text = (Path(__file__).resolve().parents[2] / "converters" / "edgepack.toml").read_bytes()
    return st.one_of(_recipe_doc(), st.text(max_size=300), mutate(text).map(lambda b: b.decode("latin-1")))


def _run_recipe(doc: Any) -> object:
    from converters._recipe import load_recipe, recipe_from_dict

    if isinstance(doc, str):
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "edgepack.toml"
            p.write_text(doc, encoding="utf-8", errors="surrogatepass")
            return _expect(lambda: load_recipe(p), (EdgepackError,))
    return _expect(lambda: recipe_from_dict(doc), (EdgepackError,))


def _param_inputs() -> st.SearchStrategy[Any]:
    s = seeds()
    body = st.one_of(st.just(s.epu_body), mutate(s.epu_body), st.binary(max_size=200))
    return st.one_of(mutate(s.epu), st.tuples(replace_field(s.epu_header), body))


def _run_param(x: Any) -> object:
    from edgepack._params import MAGIC
    from edgepack._signing import sign_bytes

    s = seeds()
    if isinstance(x, tuple):  # a validly signed but malformed header: what a compromised signer could send
        signed, body = x
        try:
            env = canonical_bytes({"signed": signed, "signatures": [sign_bytes(s.key, canonical_bytes(signed))
                                                                    .to_dict()]})
        except (ValueError, TypeError):
            return None  # not JSON-encodable: no such file can exist
        data = MAGIC + len(env).to_bytes(4, "big") + env + body
    else:
        data = x

    def go() -> object:
        u, raw = parse_param_update(data, s.trust, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        return apply_param_update(u, raw, {"m.onnx": s.onnx})
    return _expect(go, (EdgepackError,))


def _weights_inputs() -> st.SearchStrategy[Any]:
    s = seeds()
    return st.tuples(st.sampled_from(["onnx", "tflite"]), st.one_of(mutate(s.onnx), st.binary(max_size=400)))


def _run_weights(x: Any) -> object:
    fmt, data = x

    def go() -> object:
        slots = locate_weights(fmt, data)
        return read_weights(fmt, data, list(slots)[:4])
    return _expect(go, (EdgepackError,))


def _device_inputs() -> st.SearchStrategy[Any]:
    s = seeds()
    tensor = st.fixed_dictionaries({
        "name": st.sampled_from(list(s.spec.names)) | st.text(max_size=6),
        "shape": st.sampled_from([list(t.shape) for t in s.spec.tensors]) | st.lists(st.integers(-2, 70), max_size=3),
        "dtype": st.sampled_from(["float32", "float64", "int8", "<f4", "object", "V0", "garbage"]),
        "codec": st.sampled_from(["none", "int8", "topk", "zstd", ""]),
        "meta": st.dictionaries(st.sampled_from(["scale", "k", "x"]), json_values, max_size=2),
        "data": st.binary(max_size=300)})
    header = st.fixed_dictionaries({
        "round_id": st.sampled_from(["r-fuzz", "r-other"]), "base_version": st.sampled_from([1, 0, -1, 2**70]),
        "device_id": st.sampled_from(["d-fuzz", "d-other"]), "num_samples": st.integers(-5, 2**40),
        "tensors": st.lists(tensor, max_size=3), "metrics": st.dictionaries(st.text(max_size=5), json_values,
                                                                              max_size=3)})
    return st.one_of(mutate(s.device_blob), header, st.tuples(replace_field(_device_envelope()), st.just(b"")))


def _device_envelope() -> dict[str, Any]:
    import struct

    from edgepack.federated._update import MAGIC

    b = seeds().device_blob
    (n,) = struct.unpack("<I", b[len(MAGIC):len(MAGIC) + 4])
    return json.loads(b[len(MAGIC) + 4:len(MAGIC) + 4 + n])["signed"]


def _run_device(x: Any) -> object:
    import struct

    from edgepack._signing import sign_bytes
    from edgepack.federated import Rejection, validate_update
    from edgepack.federated._update import MAGIC

    s = seeds()
    if isinstance(x, dict):  # random tensors, validly signed by an enrolled device
        payload = b"".join(t["data"] for t in x["tensors"])
        off, entries = 0, []
        for t in x["tensors"]:
            entries.append({"name": t["name"], "shape": t["shape"], "dtype": t["dtype"], "codec": t["codec"],
                            "meta": t["meta"], "offset": off, "nbytes": len(t["data"])})
            off += len(t["data"])
        import hashlib

        signed = {"schema": _device_envelope()["schema"], "round_id": x["round_id"],
                  "base_version": x["base_version"], "device_id": x["device_id"], "update_id": "u" * 32,
                  "num_samples": x["num_samples"], "tensors": entries,
                  "payload": {"nbytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()},
                  "metrics": x["metrics"]}
        x = (signed, payload)
    if isinstance(x, tuple):
        signed, payload = x
        try:
            env = canonical_bytes({"signed": signed,
                                   "signatures": [sign_bytes(s.dev_key, canonical_bytes(signed)).to_dict()]})
        except (ValueError, TypeError):
            return None
        x = MAGIC + struct.pack("<I", len(env)) + env + payload
    # failures are data here (STYLE rule 9): validate_update returns a Rejection, it never raises
    res = validate_update(x, s.ctx, {"d-fuzz": s.dev_key.public})
    assert isinstance(res, Rejection) or res.device_id == "d-fuzz"
    return res


def _trust_inputs() -> st.SearchStrategy[Any]:
    d = seeds().trust_doc
    return st.one_of(json_values, replace_field(d), mutate(canonical_bytes(d)))


def _run_trust(doc: Any) -> object:
    from edgepack import load_trust

    if isinstance(doc, bytes):
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "trust.json"
            p.write_bytes(doc)
            return _expect(lambda: load_trust(p), (EdgepackError,))

    def go() -> object:
        t = Trust.from_dict(doc)
        Trust.from_dict(t.to_dict())
        return t
    return _expect(go, (EdgepackError,))


def _lazy(fn: Callable[[], st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    return st.deferred(fn)  # seeds are built on first draw, not at import


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("manifest", _lazy(_manifest_inputs), _run_manifest),
    Target("recipe", _lazy(_recipe_inputs), _run_recipe),
    Target("param_update", _lazy(_param_inputs), _run_param),
    Target("weights", _lazy(_weights_inputs), _run_weights),
    Target("device_update", _lazy(_device_inputs), _run_device, allowed=()),
    Target("trust", _lazy(_trust_inputs), _run_trust),
]}
