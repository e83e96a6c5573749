"""``edgepack fl simulate``: federated rounds end to end on one machine.

A real fleet server (gunicorn on 127.0.0.1, SQLite, TUF) and N real device
agent processes, each with a non-IID share of scikit-learn's digits, run R
rounds: train on device, compress and sign, validate and fold, champion vs
challenger, signed parameter release, health-gated rollout, and again.
Imports ``fleet_server``, scikit-learn and onnx only when it runs.
"""

from ._errors import SimulationError
from ._run import CODECS, RoundRow, SimulationConfig, SimulationResult, simulate

__all__ = ["CODECS", "RoundRow", "SimulationConfig", "SimulationError", "SimulationResult", "simulate"]
