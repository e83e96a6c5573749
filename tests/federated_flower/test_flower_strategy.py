"""The Flower Strategy adapter: edgepack validation + streaming FedAvg + signed release inside Flower.

Runs only where ``flwr`` is installed (the separate ``.venv-flwr``; see docs/federated.md).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

flwr = pytest.importorskip("flwr")

from flwr.common import Code, FitRes, Status, ndarrays_to_parameters  # noqa: E402

from edgepack import generate_key  # noqa: E402
from edgepack.federated import CompressionConfig, ParamSpec, compress, encode_update, open_release  # noqa: E402
from edgepack.federated.flower import (  # noqa: E402
    EdgepackClient,
    EdgepackStrategy,
    RoundReport,
    blob_to_ndarrays,
)

sys.path.insert(0, str(Path(__file__).parent))
import digits_task  # noqa: E402


def fit_res(arrays: list[np.ndarray], n: int) -> FitRes:
    return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, {})


def test_aggregate_fit_folds_valid_updates_and_reports_rejections() -> None:
    keys = {f"d{i}": generate_key() for i in range(3)}
    init = digits_task.init_params()
    release_key = generate_key()
    seen: list[RoundReport] = []
    strat = EdgepackStrategy(initial_params=init, device_keys={d: k.public for d, k in keys.items()},
                             model="digits", base_version=1, release_key=release_key, release_hook=seen.append,
                             min_fit_clients=1, min_available_clients=1)
    rng = np.random.default_rng(0)
    deltas = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in init.items()} for _ in range(2)]
    rid = strat.round_id(1)

    def blob(dev: str, delta: dict, n: int, **kw: object) -> bytes:
        args = {"round_id": rid, "base_version": 1, "device_id": dev, "num_samples": n}
        args.update(kw)
        return encode_update(keys[dev], tensors=compress(delta, CompressionConfig("none")), **args)  # type: ignore[arg-type]

    results = [
        (None, fit_res(blob_to_ndarrays(blob("d0", deltas[0], 10)), 10)),
        (None, fit_res(blob_to_ndarrays(blob("d1", deltas[1], 30)), 30)),
        (None, fit_res(blob_to_ndarrays(blob("d2", deltas[0], 99, round_id="flwr-digits-0")), 99)),  # old round
        (None, fit_res([np.zeros(3, np.float32)], 5)),  # a plain Flower client, not signed
    ]
    params, metrics = strat.aggregate_fit(1, results, [])  # type: ignore[arg-type]
    assert strat.version == 2
    assert params is not None and metrics["accepted"] == 2 and metrics["rejected"] == 2
    reasons = sorted(r["reason"] for r in json.loads(str(metrics["rejections"])))
    assert reasons == ["malformed", "wrong_round"]
    want = {k: (deltas[0][k].astype(np.float64) * 10 + deltas[1][k].astype(np.float64) * 30) / 40 for k in init}
    for k in init:
        np.testing.assert_array_equal(strat.global_params[k], (init[k] + want[k]).astype(np.float32))
    rel = open_release(seen[0].release, {release_key.keyid: release_key.public}, ParamSpec.from_params(init))
    assert rel.version == 2 and rel.header["base_version"] == 1
    np.testing.assert_array_equal(rel.params["W"], strat.global_params["W"])


@pytest.mark.slow
def test_flower_simulation_raises_accuracy_and_rejects_an_impostor(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.client import ClientApp
    from flwr.common import Context
    from flwr.server import ServerApp, ServerConfig
    from flwr.simulation import run_simulation

    n_clients = 5
    clients, (xt, yt) = digits_task.load(n_clients)
    keys = {f"dev-{i}": generate_key() for i in range(n_clients)}
    impostor = "dev-4"  # signs with a key the server never enrolled
    impostor_key = generate_key()
    release_key = generate_key()
    acc_by_round: dict[int, float] = {}

    def evaluate_fn(server_round: int, arrays: list[np.ndarray], config: dict) -> tuple[float, dict]:
        acc_by_round[server_round] = digits_task.accuracy(dict(zip(["W", "b"], arrays, strict=True)), xt, yt)
        return 0.0, {"accuracy": acc_by_round[server_round]}

    reports: list[RoundReport] = []
    strategy = EdgepackStrategy(initial_params=digits_task.init_params(),
                                device_keys={d: k.public for d, k in keys.items()}, model="digits",
                                base_version=1, compression=CompressionConfig("int8"), release_key=release_key,
                                release_hook=reports.append, quorum=3, fraction_fit=1.0, fraction_evaluate=0.0,
                                min_fit_clients=n_clients, min_available_clients=n_clients, evaluate_fn=evaluate_fn)

    # Ray pickles client_fn into worker processes; private keys do not pickle, so they travel as PEM.
    pems = {d: (impostor_key if d == impostor else k).private_pem() for d, k in keys.items()}

    def client_fn(context: Context):  # type: ignore[no-untyped-def]
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        from edgepack import SigningKey

        pid = int(context.node_config["partition-id"])
        dev = f"dev-{pid}"
        x, y = clients[pid]
        key = SigningKey(load_pem_private_key(pems[dev], password=None))  # type: ignore[arg-type]
        return EdgepackClient(dev, key, ["W", "b"], digits_task.make_train(x, y), seed=pid).to_client()

    # Ray workers unpickle client_fn, which refers to digits_task by module name.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    run_simulation(server_app=ServerApp(config=ServerConfig(num_rounds=4), strategy=strategy),
                   client_app=ClientApp(client_fn=client_fn), num_supernodes=n_clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "include_dashboard": False}})
    assert len(reports) == 4
    for r in reports:
        assert len(r.accepted) == n_clients - 1
        assert [(x.reason, x.device_id) for x in r.rejected] == [("bad_signature", impostor)]
    assert acc_by_round[4] > acc_by_round[0] + 0.3, acc_by_round
    last = open_release(reports[-1].release, {release_key.keyid: release_key.public},
                        ParamSpec.from_params(digits_task.init_params()))
    assert last.version == 5
    assert digits_task.accuracy(last.params, xt, yt) == pytest.approx(acc_by_round[4])


def test_round_below_quorum_keeps_the_model() -> None:
    key = generate_key()
    init = digits_task.init_params()
    strat = EdgepackStrategy(initial_params=init, device_keys={"d0": key.public}, model="digits", base_version=1,
                             quorum=2, min_fit_clients=1, min_available_clients=1)
    b = encode_update(key, round_id=strat.round_id(1), base_version=1, device_id="d0", num_samples=5,
                      tensors=compress(init, CompressionConfig("none")))
    params, metrics = strat.aggregate_fit(1, [(None, fit_res(blob_to_ndarrays(b), 5))], [])  # type: ignore[list-item]
    assert params is None and metrics["accepted"] == 1 and metrics["new_version"] == -1 and strat.version == 1
