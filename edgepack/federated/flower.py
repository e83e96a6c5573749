"""A Flower (``flwr``) strategy that uses edgepack's validation, streaming aggregation and signed release.

For deployments that outgrow the built-in fleet server: Flower handles the
transport and client sampling, and :class:`EdgepackStrategy` replaces
FedAvg's aggregation with edgepack's: each device update must be a signed
edgepack device update (bound to Flower's round and the current base version),
is validated (rejections come back in the round's metrics), folded into a
float64 streaming accumulator, stepped with a server optimizer, and the new
global model is signed as a parameter update and handed to ``release_hook``.

Devices return the signed blob as the only "tensor" (a uint8 array), which
:class:`EdgepackClient` does for a ``NumPyClient``. Needs ``flwr``, which
conflicts with the main environment's pins; see docs/federated.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.client import NumPyClient
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from .._keys import PublicKey, SigningKey
from ._aggregate import RoundAccumulator
from ._compress import CompressionConfig, ErrorFeedback, compress
from ._optim import FedAvgConfig, OptimizerConfig, ServerOptimizer
from ._params import Params, ParamSpec
from ._release import ReleaseFn, sign_release
from ._update import encode_update
from ._validate import Rejection, RoundContext, ValidationPolicy, fold_update, validate_update

__all__ = ["EdgepackClient", "EdgepackStrategy", "RoundReport", "blob_to_ndarrays"]

UPDATE_TENSOR_TYPE = "edgepack.device-update"


@dataclass
class RoundReport:
    """What happened in one Flower round, as data (shown by a dashboard, kept for audit)."""

    round_id: str
    base_version: int
    accepted: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)
    new_version: int | None = None
    release: bytes | None = None

    def metrics(self) -> dict[str, Scalar]:
        return {"accepted": len(self.accepted), "rejected": len(self.rejected),
                "rejections": json.dumps([r.to_dict() for r in self.rejected]),
                "new_version": -1 if self.new_version is None else self.new_version}


def blob_to_ndarrays(blob: bytes) -> list[np.ndarray]:
    """Carry a signed device update through Flower's ``NDArrays`` (as one uint8 array)."""
    return [np.frombuffer(blob, dtype=np.uint8)]


def _blob_of(res: FitRes) -> bytes | None:
    p = res.parameters
    if p.tensor_type == UPDATE_TENSOR_TYPE and len(p.tensors) == 1:
        return bytes(p.tensors[0])
    try:
        arrays = parameters_to_ndarrays(p)
    except (ValueError, OSError, EOFError):  # not .npy bytes, or object arrays (allow_pickle=False)
        return None
    if len(arrays) == 1 and arrays[0].dtype == np.uint8 and arrays[0].ndim == 1:
        return arrays[0].tobytes()
    return None


class EdgepackStrategy(FedAvg):
    """FedAvg's sampling and config, with edgepack's validation, aggregation and signed release.

    Args:
        spec / initial_params: the model's parameters (names fix the tensor order).
        device_keys: device id -> enrolled public key.
        base_version: the released version round 1 trains from; each promoted round adds 1.
        release_fn: builds the signed release, e.g. :func:`core_param_update_release` (the fleet's
            parameter-update file for the rollout path).
        release_key: without ``release_fn``, sign a round-result blob (:func:`sign_release`) with this key;
            with neither, no release is made.
        release_hook: called with each round's :class:`RoundReport` (holding the signed release).
        quorum: accepted updates needed to step the model; below it the round keeps the old model.
        Other keyword arguments go to Flower's ``FedAvg`` (fractions, minimum clients, evaluate_fn...).
    """

    def __init__(self, *, initial_params: Params, device_keys: Mapping[str, PublicKey], model: str,
                 base_version: int, policy: ValidationPolicy | None = None,
                 optimizer: OptimizerConfig | None = None, compression: CompressionConfig | None = None,
                 release_key: SigningKey | None = None, release_fn: ReleaseFn | None = None,
                 release_hook: Callable[[RoundReport], None] | None = None, round_prefix: str = "flwr",
                 quorum: int = 1, **fedavg_kwargs: Any) -> None:
        self.spec = ParamSpec.from_params(initial_params)
        self.global_params: Params = dict(initial_params)
        super().__init__(initial_parameters=ndarrays_to_parameters(list(self.global_params.values())),
                         **fedavg_kwargs)
        self.device_keys, self.model, self.version = dict(device_keys), model, base_version
        self.policy = policy or ValidationPolicy()
        self.optimizer = ServerOptimizer(self.spec, optimizer or FedAvgConfig())
        self.compression = compression or CompressionConfig()
        self.release_key, self.release_hook, self.round_prefix = release_key, release_hook, round_prefix
        self.release_fn = release_fn
        self.reports: list[RoundReport] = []
        self.quorum = quorum

    def round_id(self, server_round: int) -> str:
        return f"{self.round_prefix}-{self.model}-{server_round}"

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[Any]:
        """FedAvg's sampling, plus what each device must bind its update to."""
        pairs = super().configure_fit(server_round, parameters, client_manager)
        extra: dict[str, Scalar] = {"round_id": self.round_id(server_round), "base_version": self.version,
                                    "codec": self.compression.codec, "topk_ratio": self.compression.topk_ratio}
        for _, ins in pairs:
            ins.config.update(extra)
        return pairs

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Validate each update, fold the accepted ones, step the optimizer and sign the release."""
        report = RoundReport(self.round_id(server_round), self.version)
        ctx = RoundContext(report.round_id, self.version, self.spec, codecs=(self.compression.codec,))
        acc = RoundAccumulator(self.spec)
        devices: set[str] = set()
        for _, res in results:
            blob = _blob_of(res)
            if blob is None:
                report.rejected.append(Rejection("malformed", "the client did not return an edgepack device update"))
                continue
            r = validate_update(blob, ctx, self.device_keys, self.policy, seen_update_ids=acc,
                                seen_devices=devices)
            if isinstance(r, Rejection):
                report.rejected.append(r)
                continue
            folded = fold_update(acc, r, self.policy)
            if folded.rejection is not None:
                report.rejected.append(folded.rejection)
                continue
            devices.add(r.device_id)
            report.accepted.append(r.update_id)
            if folded.verdict is not None and folded.verdict.flagged:
                report.flagged.append(r.update_id)
        self.reports.append(report)
        if acc.count == 0 or acc.count < self.quorum:
            self._publish(report)
            return None, report.metrics()
        self.global_params = self.optimizer.step(self.global_params, acc)
        self.version += 1
        report.new_version = self.version
        if self.release_fn is not None:
            report.release = self.release_fn(self.global_params, self.version, report.base_version, report.round_id)
        elif self.release_key is not None:
            report.release = sign_release(self.release_key, self.global_params, model=self.model,
                                          version=self.version, base_version=report.base_version,
                                          round_id=report.round_id,
                                          summary={"accepted": len(report.accepted),
                                                   "rejected": len(report.rejected),
                                                   "optimizer": self.optimizer.name})
        self._publish(report)
        return ndarrays_to_parameters(list(self.global_params.values())), report.metrics()

    def _publish(self, report: RoundReport) -> None:
        if self.release_hook is not None:
            self.release_hook(report)


TrainFn = Callable[[Params, Mapping[str, Scalar]], tuple[Params, int, dict[str, float]]]


class EdgepackClient(NumPyClient):
    """A Flower client that trains locally and returns a compressed, signed edgepack update.

    ``train(global_params, config) -> (delta, num_samples, metrics)``; the
    error-feedback residual stays on the client between rounds.
    """

    def __init__(self, device_id: str, key: SigningKey, names: list[str], train: TrainFn,
                 seed: int | None = None) -> None:
        self.device_id, self.key, self.names, self.train = device_id, key, names, train
        self.feedback = ErrorFeedback()
        self.rng = np.random.default_rng(seed)

    def fit(self, parameters: list[np.ndarray], config: dict[str, Scalar]) -> tuple[list[np.ndarray], int, dict]:
        global_params = dict(zip(self.names, parameters, strict=True))
        delta, n, metrics = self.train(global_params, config)
        cfg = CompressionConfig(str(config.get("codec", "none")), float(config.get("topk_ratio", 0.01)))
        tensors = compress(delta, cfg, feedback=self.feedback if cfg.codec != "none" else None, rng=self.rng)
        blob = encode_update(self.key, round_id=str(config["round_id"]), base_version=int(config["base_version"]),
                             device_id=self.device_id, num_samples=n, tensors=tensors, metrics=metrics)
        return blob_to_ndarrays(blob), n, {}
