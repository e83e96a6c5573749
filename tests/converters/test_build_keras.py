"""A Keras model through every precision on both targets (tf2onnx via Keras'
own ONNX export; TFLiteConverter), checked against the original."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

import converters
from edgepack import verify_bundle


@pytest.fixture(scope="module")
def keras_build(digits, keys, tmp_path_factory):
    import keras
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 1), name="pixels"), keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                          keras.layers.MaxPooling2D(), keras.layers.Flatten(), keras.layers.Dense(10)])
    m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    xt = digits["x_train"].transpose(0, 2, 3, 1)
    m.fit(xt, digits["y_train"], epochs=3, batch_size=64, verbose=0)
    x_cal, x_ev = digits["x_cal"].transpose(0, 2, 3, 1), digits["x_eval"].transpose(0, 2, 3, 1)
    rec = {"model": {"name": "kdigits"}, "output": {"names": ["logits"]}, "tflite": {"int8_io": True},
           "build": {"precisions": ["fp32", "fp16", "int8-dynamic", "int8-static"]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = converters.build(m, rec, out=tmp_path_factory.mktemp("keras"), calibration=x_cal,
                             eval_data=(x_ev, digits["y_eval"]), key=keys[0])
    return r, verify_bundle(r.bundle, keys[1], keep_members=True), m, x_ev


def test_keras_builds_eight_artifacts_that_all_pass_parity(keras_build):
    r, vb, _, _ = keras_build
    got = {(a.format, a.precision) for a in vb.manifest.artifacts}
    assert got == {(f, p) for f in ("onnx", "tflite") for p in converters.PRECISIONS}
    assert all(a.parity["passed"] for a in vb.manifest.artifacts)
    assert vb.manifest.io["inputs"][0]["layout"] == "NHWC"
    assert vb.manifest.io["inputs"][0]["shape"] == ["batch", 8, 8, 1]


def test_keras_fp16_onnx_stores_fp16_weights_but_float_io(keras_build):
    _, vb, _, _ = keras_build
    m = onnx.load_from_string(vb.member("artifacts/kdigits.fp16.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_keras_dynamic_int8_onnx_uses_integer_matmul_ops(keras_build):
    _, vb, _, _ = keras_build
    ops = {n.op_type for n in onnx.load_from_string(vb.member("artifacts/kdigits.int8-dynamic.onnx")).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"}


def test_keras_full_int8_tflite_with_int8_io_matches_the_original(keras_build):
    from converters._runners import open_session, run_batched
    _, vb, model, x = keras_build
    entry = vb.manifest.artifact("artifacts/kdigits.int8.tflite")
    assert len(entry.unrecognized["io_quant"]["outputs"]) == 1
    sess = open_session("tflite", vb.member(entry.path))
    assert sess.impl.get_input_details()[0]["dtype"] == np.int8
    assert sess.fixed_batch is None  # TFLiteConverter keeps Keras' dynamic batch
    out = run_batched(sess, [x])[0]
    ref = np.asarray(model(x, training=False))
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95
