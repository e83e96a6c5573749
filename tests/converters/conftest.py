"""Shared, session-scoped fixtures: torch/TF imports and builds are slow, so
each tiny model is trained and each bundle built once per session."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("EDGEPACK_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return {"x_cal": x[:200], "x_eval": x[1400:1600], "y_eval": d.target[1400:1600],
            "x_train": x[:1400], "y_train": d.target[:1400]}


def _tiny_cnn():
    import torch

    class TinyCNN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.c2 = torch.nn.Conv2d(8, 16, 3, padding=1)
            self.fc = torch.nn.Linear(16 * 2 * 2, 10)

        def forward(self, x):
            x = torch.nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
            x = torch.nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
            return self.fc(x.flatten(1))

    return TinyCNN()


@pytest.fixture(scope="session")
def torch_cnn(digits):
    import torch
    torch.manual_seed(0)
    m = _tiny_cnn()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    x, y = torch.from_numpy(digits["x_train"]), torch.from_numpy(digits["y_train"])
    for _ in range(6):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return m.eval()


def make_drift_model():
    """A model that really drifts under int8: two hidden units carry activations
    ~2000x the others, the output ignores them, and per-tensor int8 activation
    scales then round every useful unit to zero."""
    import torch

    class Drift(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.stem = torch.nn.Linear(16, 16)
            self.a = torch.nn.Linear(16, 32)
            self.b = torch.nn.Linear(32, 10)
            with torch.no_grad():
                self.a.weight[:2] *= 2000
                self.b.weight[:, :2] = 0
                self.b.bias.zero_()

        def forward(self, x):
            return self.b(torch.relu(self.a(torch.tanh(self.stem(x)))))

    return Drift().eval()


@pytest.fixture(scope="session")
def drift_data() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    from edgepack import Trust, generate_key
    key = generate_key()
    return key, Trust.of([key.public], threshold=1)


@pytest.fixture(scope="session")
def torch_build(torch_cnn, digits, keys, tmp_path_factory):
    """The digits CNN built to ONNX + TFLite, fp32 + int8, signed."""
    import converters
    out = tmp_path_factory.mktemp("torch_build")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converters.build(
            torch_cnn, {"model": {"name": "digits"}, "output": {"names": ["logits"]}}, out=out,
            calibration=digits["x_cal"], eval_data=(digits["x_eval"], digits["y_eval"]), key=keys[0])


@pytest.fixture(scope="session")
def saved_pt2(torch_cnn, tmp_path_factory) -> Path:
    import torch
    p = tmp_path_factory.mktemp("pt2") / "digits.pt2"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(torch_cnn, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},)), p)
    return p


@pytest.fixture(scope="session")
def npz_files(digits, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    np.savez(d / "calib.npz", x=digits["x_cal"])
    np.savez(d / "eval.npz", x=digits["x_eval"], y=digits["y_eval"])
    return {"calib": d / "calib.npz", "eval": d / "eval.npz"}
