"""A tiny real federated task: softmax regression on sklearn's digits, non-IID across clients.

Imported by the Flower simulation's client processes (Ray workers), so it lives
in its own module with no test-only imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.datasets import load_digits


def load(num_clients: int, seed: int = 0) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """Client shards (each mostly 2 classes) and a held-out test set."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    n_test = 400
    xt, yt, xr, yr = x[:n_test], y[:n_test], x[n_test:], y[n_test:]
    by_label = np.argsort(yr, kind="stable")  # label-sorted shards: the classic pathological non-IID split
    shards = np.array_split(by_label, 2 * num_clients)
    picks = rng.permutation(2 * num_clients)
    clients = []
    for c in range(num_clients):
        idx = np.concatenate([shards[picks[2 * c]], shards[picks[2 * c + 1]]])
        clients.append((xr[idx], yr[idx]))
    return clients, (xt, yt)


def init_params() -> dict[str, np.ndarray]:
    return {"W": np.zeros((64, 10), np.float32), "b": np.zeros(10, np.float32)}


def accuracy(params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float(((x @ params["W"] + params["b"]).argmax(1) == y).mean())


def local_delta(params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, *, epochs: int = 5,
                lr: float = 0.5) -> dict[str, np.ndarray]:
    """Full-batch gradient descent on cross-entropy; returns new - old."""
    w, b = params["W"].astype(np.float64), params["b"].astype(np.float64)
    onehot = np.eye(10)[y]
    for _ in range(epochs):
        z = x @ w + b
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(y)
        w -= lr * (x.T @ g)
        b -= lr * g.sum(0)
    return {"W": (w - params["W"]).astype(np.float32), "b": (b - params["b"]).astype(np.float32)}


def make_train(x: np.ndarray, y: np.ndarray) -> Any:
    def train(global_params: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> tuple[dict, int, dict]:
        return local_delta(global_params, x, y), len(y), {}

    return train
