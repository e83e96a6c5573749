"""Other sources and data kinds: a SavedModel directory, a .keras file, and a
directory of images with a preprocessing spec."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import converters
from converters import _data


@pytest.fixture(scope="module")
def keras_model():
    import keras
    keras.utils.set_random_seed(1)
    m = keras.Sequential([keras.Input((8, 8, 1), name="pixels"), keras.layers.Flatten(), keras.layers.Dense(10)])
    m(np.zeros((1, 8, 8, 1), np.float32))
    return m


@pytest.mark.parametrize("kind", ["saved_model", "keras_file"])
def test_saved_model_and_keras_file_build_and_match_the_original(keras_model, digits, tmp_path, kind):
    src = tmp_path / ("sm" if kind == "saved_model" else "m.keras")
    if kind == "saved_model":
        keras_model.export(str(src), verbose=False)
    else:
        keras_model.save(src)
    x = digits["x_eval"].transpose(0, 2, 3, 1)[:64]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = converters.build(str(src), {"build": {"precisions": ["fp32"]}}, out=tmp_path / "o", eval_data=x)
    assert {a["format"] for a in r.artifacts} == {"onnx", "tflite"}
    ref = np.asarray(keras_model(x))
    from converters._runners import open_session, run_batched
    for a in r.artifacts:
        import zipfile
        data = zipfile.ZipFile(r.bundle).read(f"artifacts/{a['name']}")
        out = run_batched(open_session(a["format"], data), [x])[0]
        assert np.abs(out - ref).max() < 1e-4, a["name"]
    assert r.report["lineage"]["source"] == str(src)


def test_image_directory_is_resized_normalised_and_labelled_by_folder(tmp_path):
    from PIL import Image
    from skimage import data as skdata
    for cls, name in (("cat", "chelsea"), ("rocket", "rocket"), ("coffee", "coffee")):
        (tmp_path / cls).mkdir()
        img = getattr(skdata, name)()
        for i in range(2):
            Image.fromarray(img[i * 20:, i * 10:]).save(tmp_path / cls / f"{i}.png")
    cfg = _data.DataConfig(image_size=(16, 24), image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))
    ds = _data.run(tmp_path, cfg)
    assert ds.x.shape == (6, 3, 16, 24) and ds.x.dtype == np.float32
    assert sorted(set(ds.y.tolist())) == [0, 1, 2]
    assert ds.x.min() >= -2.0 - 1e-6 and ds.x.max() <= 2.0 + 1e-6


def test_image_directory_without_a_preprocessing_spec_is_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(__import__("edgepack").DataError, match="preprocessing spec"):
        _data.run(tmp_path)
