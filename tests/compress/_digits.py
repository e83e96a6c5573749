"""The digits data and CNNs the compression tests and benchmark share (sklearn's bundled
8x8 digits: no download)."""

from __future__ import annotations

import numpy as np

__all__ = ["digits_split", "make_teacher", "train_teacher"]


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): NCHW float32 in [0, 1], a 75/25 stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return xtr, ytr, xte, yte


def make_teacher(width: int = 32):
    import torch.nn as nn

    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * w * 4, 4 * w), nn.ReLU(), nn.Linear(4 * w, 10))


def train_teacher(xtr: np.ndarray, ytr: np.ndarray, epochs: int = 15, width: int = 32, seed: int = 0):
    import torch

    from converters._finetune import train

    torch.manual_seed(seed)
    m = make_teacher(width)
    train(m, xtr, ytr, epochs=epochs, lr=2e-3, batch_size=64, seed=seed, desc="teacher")
    return m
