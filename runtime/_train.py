"""Local training for federated rounds: fine-tune the last dense layer on device data.

The numpy trainer is softmax regression on the frozen penultimate features
(minibatch SGD with L2), so a device needs nothing beyond numpy. ``Trainer`` is a
protocol: a device that has torch can use ``"torch"`` (or register its own);
both get the same tests. ``train_local`` returns a ``LocalUpdate``: the new head
weights keyed and laid out exactly as the artifact stores them, so the fleet can
average them (``edgepack.federated``) and ship the result as a parameter update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ._errors import TrainingError
from ._head import find_head
from ._iospec import gather_inputs

__all__ = ["TRAINERS", "LocalUpdate", "NumpyTrainer", "TorchTrainer", "TrainConfig", "Trainer",
           "register_trainer", "train_local"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    learning_rate: float = 0.1
    batch_size: int = 32
    l2: float = 1e-4
    seed: int = 0


class Trainer(Protocol):
    """Fit a dense head ``logits = f @ weight.T + bias`` to (features, labels)."""

    def fit(self, features: np.ndarray, labels: np.ndarray, weight: np.ndarray, bias: np.ndarray,
            config: TrainConfig) -> tuple[np.ndarray, np.ndarray]: ...


TRAINERS: dict[str, Trainer] = {}


def register_trainer(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        TRAINERS[name] = cls()
        return cls
    return deco


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@register_trainer("numpy")
class NumpyTrainer:
    def fit(self, features: np.ndarray, labels: np.ndarray, weight: np.ndarray, bias: np.ndarray,
            config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
        w, b = weight.astype(np.float64).copy(), bias.astype(np.float64).copy()
        f = features.astype(np.float64)
        onehot = np.eye(w.shape[0])[labels]
        rng = np.random.default_rng(config.seed)
        for _ in range(config.epochs):
            order = rng.permutation(len(f))
            for s in range(0, len(f), config.batch_size):
                idx = order[s:s + config.batch_size]
                g = (_softmax(f[idx] @ w.T + b) - onehot[idx]) / len(idx)   # d(cross-entropy)/d(logits)
                w -= config.learning_rate * (g.T @ f[idx] + config.l2 * w)
                b -= config.learning_rate * g.sum(axis=0)
        return w.astype(np.float32), b.astype(np.float32)


@register_trainer("torch")
class TorchTrainer:
    """The same optimisation in torch (for devices that have it). Imported lazily."""

    def fit(self, features: np.ndarray, labels: np.ndarray, weight: np.ndarray, bias: np.ndarray,
            config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
        try:
            import torch
        except ImportError as e:
            raise TrainingError("the torch trainer needs torch", hint="use trainer='numpy'") from e
        torch.manual_seed(config.seed)
        lin = torch.nn.Linear(weight.shape[1], weight.shape[0]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(weight.astype(np.float64)))
            lin.bias.copy_(torch.from_numpy(bias.astype(np.float64)))
        opt = torch.optim.SGD([lin.weight, lin.bias], lr=config.learning_rate)
        f, y = torch.from_numpy(features.astype(np.float64)), torch.from_numpy(labels.astype(np.int64))
        rng = np.random.default_rng(config.seed)
        for _ in range(config.epochs):
            order = torch.from_numpy(rng.permutation(len(f)))
            for s in range(0, len(f), config.batch_size):
                idx = order[s:s + config.batch_size]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(lin(f[idx]), y[idx])
                loss = loss + 0.5 * config.l2 * (lin.weight ** 2).sum()
                loss.backward()
                opt.step()
        return (lin.weight.detach().numpy().astype(np.float32), lin.bias.detach().numpy().astype(np.float32))


@dataclass
class LocalUpdate:
    """A device's contribution to a round.

    ``weights``: {artifact weight name: new values, as stored in ``artifact``};
    ``num_samples``: how many local samples trained it (the FedAvg weight).
    """

    weights: dict[str, np.ndarray]
    num_samples: int
    model: str
    base_version: int
    artifact: str
    metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "num_samples": self.num_samples, "model": self.model,
                "base_version": self.base_version, "artifact": self.artifact, "metrics": dict(self.metrics)}


def _accuracy(f: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((f @ w.T + b).argmax(axis=1) == y))


def train_local(model: Any, inputs: Any, labels: np.ndarray, *, trainer: str | Trainer = "numpy",
                config: TrainConfig | None = None, normalize: bool = False) -> LocalUpdate:
    """Fine-tune ``model``'s last dense layer on local data; return the update.

    Raises:
        TrainingError: no dense head, labels that do not fit, or an unknown/unavailable trainer.
        InputValidationError: inputs that do not match the manifest.
    """
    config = config or TrainConfig()
    t = TRAINERS.get(trainer) if isinstance(trainer, str) else trainer
    if t is None:
        raise TrainingError(f"unknown trainer {trainer!r}", hint=f"registered: {sorted(TRAINERS)}")
    xs = gather_inputs(model.io.inputs, inputs)
    if normalize:
        xs = model._normalize(xs)
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(xs[0]) or not np.issubdtype(y.dtype, np.integer):
        raise TrainingError(f"labels must be 1-D integers, one per sample ({len(xs[0])})", where="labels")
    head = find_head(model)
    if y.min() < 0 or y.max() >= head.weight.shape[0]:
        raise TrainingError(f"labels must be in [0, {head.weight.shape[0]})", where="labels")
    feats = head.features(xs)
    w, b = t.fit(feats, y, head.weight, head.bias, config)
    metrics = {"local_accuracy_before": _accuracy(feats, y, head.weight, head.bias),
               "local_accuracy_after": _accuracy(feats, y, w, b)}
    return LocalUpdate(head.stored(w, b), int(len(y)), model.name, model.version, model.artifact, metrics)
