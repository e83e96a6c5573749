"""edgepack runtime: the only part of edgepack that runs on the device.

Verify a bundle, infer through onnxruntime or LiteRT with near-zero overhead,
install atomically with A/B slots, apply signed parameter updates, collect
telemetry and train the last layer locally. It imports only numpy, the
edgepack core and (lazily) the backend packages; see docs/runtime.md.
"""

from edgepack._params import (
    ParamFormatError,
    ParamUpdate,
    encode_param_update,
    parse_param_update,
    read_weights,
)

from ._backends import BACKENDS, BackendOptions, register
from ._errors import (
    BackendError,
    BackendUnavailableError,
    HealthCheckError,
    InputValidationError,
    InstallError,
    OutOfRangeError,
    ParamUpdateError,
    TrainingError,
)
from ._golden import HealthReport, health_check
from ._iospec import IOSpec, TensorSpec, parse_io
from ._model import LoadConfig, Model, load
from ._store import InstallResult, InstallStore, SlotRecord
from ._telemetry import Telemetry, TelemetryConfig, psi
from ._train import (
    TRAINERS,
    LocalUpdate,
    NumpyTrainer,
    TorchTrainer,
    TrainConfig,
    Trainer,
    register_trainer,
    train_local,
)

__all__ = [
    "TRAINERS",
    "LocalUpdate",
    "NumpyTrainer",
    "TorchTrainer",
    "TrainConfig",
    "Trainer",
    "register_trainer",
    "train_local",
    "ParamFormatError",
    "ParamUpdate",
    "encode_param_update",
    "parse_param_update",
    "read_weights",
    "BACKENDS",
    "BackendError",
    "BackendOptions",
    "BackendUnavailableError",
    "HealthCheckError",
    "HealthReport",
    "IOSpec",
    "InputValidationError",
    "InstallError",
    "InstallResult",
    "InstallStore",
    "LoadConfig",
    "Model",
    "OutOfRangeError",
    "ParamUpdateError",
    "SlotRecord",
    "Telemetry",
    "TelemetryConfig",
    "TensorSpec",
    "TrainingError",
    "health_check",
    "load",
    "parse_io",
    "psi",
    "register",
]
