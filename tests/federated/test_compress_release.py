"""Compressed updates (bytes, unbiasedness, error feedback, strict decoding) and the signed release."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

from edgepack import BadSignatureError, UntrustedKeyError, generate_key
from edgepack.federated import (
    CODECS,
    AcceptedUpdate,
    CompressionConfig,
    DeviceUpdateFormatError,
    ErrorFeedback,
    FederatedConfigError,
    ParamSpec,
    compress,
    decode_tensor,
    open_release,
    sign_release,
    validate_update,
)

CODEC_CASES = ["none", "int8", "topk"]


def test_every_registered_codec_is_tested() -> None:
    assert set(CODECS) == set(CODEC_CASES)


@pytest.mark.parametrize(("codec", "bytes_per_param"), [("none", 4.0), ("int8", 1.0), ("topk", 0.8)])
def test_codec_payload_size(codec: str, bytes_per_param: float, rng: np.random.Generator) -> None:
    x = {"w": rng.normal(size=(200, 50)).astype(np.float32)}
    (t,) = compress(x, CompressionConfig(codec, topk_ratio=0.1), rng=rng)
    assert len(t.data) == int(bytes_per_param * 10_000)


def test_int8_stochastic_quantization_is_unbiased_and_bounded(rng: np.random.Generator) -> None:
    x = rng.normal(size=500).astype(np.float32)
    cfg = CompressionConfig("int8")
    decoded = []
    for _ in range(400):
        (t,) = compress({"x": x}, cfg, rng=rng)
        d = decode_tensor("int8", t.data, t.meta, t.shape, t.dtype)
        assert np.all(np.abs(d - x) <= t.meta["scale"] * (1 + 1e-6))  # one quantization step at most
        decoded.append(d)
    # Each sample's error is within one step, variance <= step^2/4: the mean of 400 is within ~5 sigma.
    bound = 5 * (t.meta["scale"] / 2) / np.sqrt(400)
    assert np.abs(np.mean(decoded, axis=0) - x).max() < bound


def test_topk_keeps_the_largest_magnitudes(rng: np.random.Generator) -> None:
    x = rng.normal(size=1000).astype(np.float32)
    (t,) = compress({"x": x}, CompressionConfig("topk", 0.05), rng=rng)
    d = decode_tensor("topk", t.data, t.meta, t.shape, t.dtype)
    keep = np.argsort(np.abs(x))[-50:]
    np.testing.assert_array_equal(np.sort(np.flatnonzero(d)), np.sort(keep))
    np.testing.assert_array_equal(d[keep], x[keep])


@pytest.mark.parametrize("codec", ["int8", "topk"])
def test_error_feedback_delivers_everything_eventually(codec: str, rng: np.random.Generator) -> None:
    fb = ErrorFeedback()
    cfg = CompressionConfig(codec, 0.05)
    sent_total = np.zeros(2000)
    delta_total = np.zeros(2000)
    for _ in range(30):
        delta = rng.normal(size=2000).astype(np.float32) * 0.01
        (t,) = compress({"x": delta}, cfg, feedback=fb, rng=rng)
        sent_total += decode_tensor(codec, t.data, t.meta, t.shape, t.dtype)
        delta_total += delta
    # sent + residual == everything the device wanted to send (up to float32 rounding).
    np.testing.assert_allclose(sent_total + fb.residual["x"], delta_total, atol=1e-5)


def test_error_feedback_state_round_trips(tmp_path, rng: np.random.Generator) -> None:
    fb = ErrorFeedback()
    compress({"x": rng.normal(size=100).astype(np.float32)}, CompressionConfig("topk", 0.1), feedback=fb, rng=rng)
    fb.save(tmp_path / "ef.npz")
    np.testing.assert_array_equal(ErrorFeedback.load(tmp_path / "ef.npz").residual["x"], fb.residual["x"])


@pytest.mark.parametrize(("codec", "data", "meta"), [
    ("none", b"\0" * 15, {}),
    ("int8", b"\0" * 3, {"scale": 1.0}),
    ("int8", b"\0" * 4, {"scale": float("nan")}),
    ("int8", b"\0" * 4, {}),
    ("topk", b"\0" * 8, {"k": 5}),
    ("topk", np.array([2, 1], "<u4").tobytes() + b"\0" * 8, {"k": 2}),
    ("topk", np.array([1, 9], "<u4").tobytes() + b"\0" * 8, {"k": 2}),
    ("topk", b"", {"k": True}),
    ("gzip", b"", {}),
], ids=["none-short", "int8-short", "int8-nan-scale", "int8-no-scale", "topk-k-over-size",
        "topk-unsorted", "topk-index-out-of-range", "topk-bool-k", "unknown-codec"])
def test_strict_decoder_refuses_bad_tensors(codec: str, data: bytes, meta: dict) -> None:
    with pytest.raises(DeviceUpdateFormatError):
        decode_tensor(codec, data, meta, (4,), "float32")


def test_unknown_codec_config_is_refused() -> None:
    with pytest.raises(FederatedConfigError):
        CompressionConfig("zstd")


@pytest.mark.parametrize("codec", CODEC_CASES)
def test_compressed_update_validates_and_decodes(codec: str, make_update: Callable, ctx, registry, spec,
                                                 rng, make_params) -> None:
    p = make_params(rng, spec, 0.01)
    r = validate_update(make_update(params=p, codec=codec), ctx, registry)
    assert isinstance(r, AcceptedUpdate)
    err = max(float(np.abs(r.params[k] - p[k]).max()) for k in p)
    assert err == 0.0 if codec == "none" else err < 0.1


def test_signed_release_round_trips_and_refuses_tampering() -> None:
    key = generate_key()
    spec = ParamSpec.from_params({"w": np.zeros((3, 2), np.float32)})
    params = {"w": np.arange(6, dtype=np.float32).reshape(3, 2)}
    blob = sign_release(key, params, model="digits", version=4, base_version=3, round_id="r1",
                        summary={"accepted": 9, "rejected": {"replay": 1}, "dp": {"noise_multiplier": 1.1}})
    rel = open_release(blob, {key.keyid: key.public}, spec)
    assert rel.version == 4 and rel.header["summary"]["dp"]["noise_multiplier"] == 1.1
    np.testing.assert_array_equal(rel.params["w"], params["w"])
    with pytest.raises(UntrustedKeyError):
        open_release(blob, {}, spec)
    with pytest.raises(BadSignatureError):
        open_release(blob.replace(b'"version":4', b'"version":5'), {key.keyid: key.public}, spec)
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(DeviceUpdateFormatError, match="sha256"):
        open_release(bytes(tampered), {key.keyid: key.public}, spec)
    with pytest.raises(DeviceUpdateFormatError, match="greater"):
        sign_release(key, params, model="digits", version=3, base_version=3, round_id="r1")


def test_package_imports_with_only_numpy_and_cryptography() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'flask', 'torch', 'tensorflow', 'flwr', 'onnxruntime', 'sklearn'}:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import edgepack.federated as f\n"
        "assert len(f.__all__) > 40\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_core_param_update_release_patches_a_real_onnx_model(onnx_bytes: bytes) -> None:
    """The round's result goes out in the fleet's own parameter-update format and runs in onnxruntime."""
    import onnxruntime as ort

    from edgepack import Trust
    from edgepack._params import apply_param_update, parse_param_update, read_weights
    from edgepack.federated import RoundAccumulator, ServerOptimizer, core_param_update_release

    base = read_weights("onnx", onnx_bytes)
    spec = ParamSpec.from_params({k: base[k] for k in ("W", "B")})
    rng = np.random.default_rng(3)
    acc = RoundAccumulator(spec)
    deltas = [{k: rng.normal(0, 0.1, t.shape).astype(np.float32) for k, t in zip(spec.names, spec.tensors,
                                                                                  strict=True)} for _ in range(2)]
    acc.fold("a", deltas[0], 1)
    acc.fold("b", deltas[1], 3)
    new = ServerOptimizer(spec).step({k: base[k] for k in spec.names}, acc)
    fed_key = generate_key()
    release = core_param_update_release([fed_key], model="tiny", artifact_path="artifacts/tiny.onnx",
                                        artifact_format="onnx", base_artifact=onnx_bytes)
    blob = release(new, 2, 1, "round-1")
    u, raw = parse_param_update(blob, Trust.of([fed_key.public]))
    rebuilt = apply_param_update(u, raw, {"artifacts/tiny.onnx": onnx_bytes})["artifacts/tiny.onnx"]
    x = rng.normal(size=(5, 4)).astype(np.float32)
    y = ort.InferenceSession(rebuilt, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    want = x @ (base["W"] + (deltas[0]["W"].astype(np.float64) + 3 * deltas[1]["W"]) / 4) + (
        base["B"] + (deltas[0]["B"].astype(np.float64) + 3 * deltas[1]["B"]) / 4)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert u.version == 2 and u.base_version == 1
